"""Reading Detectron/Caffe2 ``.pkl`` weight files without executing code.

``pickle.load`` calls whatever callable a file names, so an untrusted ``.pkl`` can run arbitrary
code. ``load_pickle_safely`` admits only what weight files are made of: dicts and lists (built in by
the pickle protocol), ``OrderedDict``, numbers, strings, and numpy arrays, dtypes and scalars.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import pickle
import pickletools
import zipfile

import numpy as np

# (module, name) pairs a weight file may reference. Python-2 era files name numpy.core.multiarray,
# which numpy 2 moved to numpy._core; _codecs.encode is how protocol 2 stores bytes (array data).
_ALLOWED_GLOBALS = frozenset({
    ("collections", "OrderedDict"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),
})


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle referenced something other than plain data (and was not run)."""


class _WeightsUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise UnsafePickleError(f"it references {module}.{name}")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module[len("numpy.core."):]
        return getattr(importlib.import_module(module), name)


def load_pickle_safely(path: str):
    """Unpickles ``path`` (Python 2 pickles included, as ``encoding="latin1"``) admitting only plain
    data and numpy arrays; anything else raises ``UnsafePickleError`` before it is called."""
    with open(path, "rb") as f:
        return _WeightsUnpickler(f, encoding="latin1").load()


# The first of the pickles in sequence that torch.save's legacy (pre-1.6, non-zip) format writes.
_LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C


def is_legacy_torch_file(path: str) -> bool:
    """Whether ``path`` is in torch.save's legacy format (plain pickles in sequence, not a zip)."""
    try:
        with open(path, "rb") as f:
            return _WeightsUnpickler(f).load() == _LEGACY_TORCH_MAGIC
    except Exception:  # noqa: BLE001  (not a pickle of plain data at its start)
        return False


def _globals_of_pickles(stream) -> list[str]:
    """``module.name`` of every global the pickles at the start of ``stream`` reference, read as
    opcodes (nothing is unpickled); stops at the first thing that is not a pickle."""
    found, strings = [], []
    with contextlib.suppress(Exception):  # the raw tensor bytes after a legacy file's pickles, or a cut file
        while True:
            for opcode, arg, _ in pickletools.genops(stream):
                if opcode.name in ("GLOBAL", "INST"):
                    found.append(arg.replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
    return found


def referenced_globals(path: str) -> list[str]:
    """The globals (``module.name``) the pickles of ``path`` reference: a zip checkpoint's data.pkl,
    a legacy torch file's pickles, or a plain pickle."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith(".pkl")]
            return [g for n in names for g in _globals_of_pickles(io.BytesIO(archive.read(n)))]
    with open(path, "rb") as f:
        return _globals_of_pickles(f)
