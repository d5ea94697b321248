"""Reading Detectron/Caffe2 ``.pkl`` weight files without executing code.

``pickle.load`` calls whatever callable a file names, so an untrusted ``.pkl`` can run arbitrary
code. ``load_pickle_safely`` admits only what weight files are made of: dicts and lists (built in by
the pickle protocol), ``OrderedDict``, numbers, strings, and numpy arrays, dtypes and scalars.
"""
from __future__ import annotations

import importlib
import pickle

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
            raise UnsafePickleError(f"it references {module}.{name}, which a weight file never needs")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module[len("numpy.core."):]
        return getattr(importlib.import_module(module), name)


def load_pickle_safely(path: str):
    """Unpickles ``path`` (Python 2 pickles included, as ``encoding="latin1"``) admitting only plain
    data and numpy arrays; anything else raises ``UnsafePickleError`` before it is called."""
    with open(path, "rb") as f:
        return _WeightsUnpickler(f, encoding="latin1").load()
