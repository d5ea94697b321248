"""Reading weight files of every supported kind and loading them into a model with a report.

Supported: this project's checkpoints, cvpods/detectron2 checkpoints (the released IFR weights;
``{"model": ...}`` or a bare state dict, ``.pth`` or detectron2 ``.pkl``), Detectron/Caffe2 ImageNet
``.pkl`` backbones (MSRA ``R-50.pkl``) and torchvision ResNet ``.pth`` state dicts. Nothing is
downloaded; nothing in a file is executed (``torch.load(weights_only=True)``, a restricted unpickler
for ``.pkl``).
"""
from __future__ import annotations

import logging
import os
import pickle
import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ifr.errors import UserError
from ifr.utils.atomic import write_atomically

from . import naming
from .conventions import CONVENTION_OF_FORMAT, TORCHVISION, InputConvention
from .safe_pickle import UnsafePickleError, is_legacy_torch_file, load_pickle_safely, referenced_globals

logger = logging.getLogger(__name__)

# cvpods/detectron2 URL scheme for model-zoo files; they are never downloaded at run time.
MODEL_ZOO_PREFIX = "detectron2://"
MODEL_ZOO_URL = "https://dl.fbaipublicfiles.com/detectron2/"


# Marks files written by ``export_cvpods_checkpoint`` (cvpods ignores entries other than "model").
EXPORT_AUTHOR = "ifr"


class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable or does not fit the model."""


def resolve_weights_path(path: str) -> str:
    """``detectron2://X`` -> the local copy ``$IFR_CACHE/detectron2/X`` (default ~/.torch/iopath_cache).
    URLs are refused with the place to put the downloaded file."""
    if path.startswith(("http://", "https://")):
        raise CheckpointError(f"MODEL.WEIGHTS {path} is a URL; weights are never downloaded at run time: download "
                              "the file yourself and pass MODEL.WEIGHTS /path/to/the/file")
    if not path.startswith(MODEL_ZOO_PREFIX):
        return path
    relative = path[len(MODEL_ZOO_PREFIX):]
    cache = os.environ.get("IFR_CACHE", os.path.expanduser("~/.torch/iopath_cache"))
    local = os.path.join(cache, "detectron2", relative)
    if not os.path.isfile(local):
        raise CheckpointError(f"MODEL.WEIGHTS {path} is not available locally and is never downloaded at run time: "
                              f"download {MODEL_ZOO_URL}{relative} to {local} (or set IFR_CACHE), or pass "
                              "MODEL.WEIGHTS /path/to/file, or MODEL.WEIGHTS \"''\" to start from scratch")
    return local


def _is_zip(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _refused_global(error: Exception, path: str) -> str | None:
    """What torch's weights-only unpickler refused (e.g. "it references posix.system"): from its
    message, else the first global of the file outside torch and collections; None when the file
    references nothing else (it is broken rather than refused)."""
    match = re.search(r"GLOBAL ([\w.]+)", str(error))
    foreign = [match[1]] if match else [g for g in referenced_globals(path)
                                        if g.split(".")[0] not in ("torch", "collections", "_codecs")]
    return f"it references {foreign[0]}" if foreign else None


def _refusal(path: str, what: str, only: str) -> CheckpointError:
    return CheckpointError(f"refusing to load {path}: {what}, which a weight file never needs (nothing in it was run). "
                           f"{only}")


def _read_pickle(path: str) -> dict:
    try:
        data = load_pickle_safely(path)
    except UnsafePickleError as e:
        raise _refusal(path, str(e), "Only pickles of plain data and numpy arrays are read; convert a trusted file "
                                     "to a .pth state dict first") from None
    except Exception as e:  # noqa: BLE001  (corrupt pickles raise many types)
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint or pickle of weights "
                              f"({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a {type(data).__name__}, not a dict of weights")
    if "model" in data and "__author__" in data:  # detectron2 model-zoo format
        model, author = data["model"], data["__author__"]
    else:  # Caffe2: a flat dict of blobs, or {"blobs": ...}
        model, author = data.get("blobs", data), None
    tensors = {k: torch.as_tensor(v) for k, v in model.items() if isinstance(v, (np.ndarray, torch.Tensor))}
    return {"model": tensors, "__author__": author}


def read_checkpoint(path: str) -> dict:
    """Reads ``path`` into ``{"model": state_dict, ...}`` (other entries: optimizer, scheduler,
    iteration, ...). ``.pkl`` files are read with the restricted unpickler."""
    path = resolve_weights_path(path)
    if os.path.isdir(path):
        files = sorted(f for f in os.listdir(path) if f.endswith((".pth", ".pkl")))
        hint = f" ({', '.join(files[-3:])} there)" if files else " (it holds no .pth or .pkl file)"
        raise CheckpointError(f"checkpoint {path} is a folder, not a file: pass one of its checkpoint files{hint}")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    torch_file = _is_zip(path) or is_legacy_torch_file(path)
    if path.endswith(".pkl") and not torch_file:
        return _read_pickle(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not torch_file:
            # A plain pickle: perhaps a Detectron weight file without its .pkl extension, which the
            # restricted unpickler reads (or refuses, naming what it references).
            return _read_pickle(path)
        refused = _refused_global(e, path)
        if refused is None:  # not a refusal by torch's weights-only unpickler: a broken file
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint of tensors and plain data "
                                  f"({type(e).__name__})") from None
        raise _refusal(path, refused, "Only tensors and plain data are read; re-save a trusted file's state dict "
                                      "with torch.save") from None
    except Exception as e:  # noqa: BLE001  (pickle / zip errors have many types)
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint of tensors and plain data "
                              f"({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a {type(data).__name__}, not a state dict or checkpoint dict")
    return data if "model" in data else {"model": data}


def non_finite_tensors(state: dict) -> list[str]:
    """Names of the floating-point tensors of ``state`` holding NaN or infinity."""
    return [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]


def group_keys(keys) -> str:
    """``['a.b.c', 'a.b.d', 'a.e']`` -> ``'a.b.* (2), a.e'``: a short listing for log messages."""
    groups = Counter(".".join(k.split(".")[:2]) + (".*" if k.count(".") > 1 else "") for k in keys)
    return ", ".join(f"{g} ({n})" if n > 1 else g for g, n in sorted(groups.items()))


@dataclass
class LoadReport:
    """What loading one checkpoint into a model did (keys in this project's names)."""

    source: str
    source_format: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    skipped_shapes: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    def log(self) -> None:
        logger.info("loaded %d tensors from %s (%s names)", len(self.loaded), self.source, self.source_format)
        if self.dropped:
            logger.info("ignored %d entries with no counterpart in this model: %s", len(self.dropped),
                        group_keys(self.dropped))
        for key, theirs, ours in self.skipped_shapes:
            logger.warning("skipped %s: shape %s in the checkpoint, %s in the model", key, theirs, ours)
        if self.missing:
            logger.warning("%d model tensors are not in the checkpoint and keep their initialisation: %s",
                           len(self.missing), group_keys(self.missing))
        if self.unexpected:
            logger.warning("%d checkpoint tensors are not used by the model: %s", len(self.unexpected),
                           group_keys(self.unexpected))


def _convention_for(source_format: str, author: str | None) -> InputConvention | None:
    if author == EXPORT_AUTHOR:  # exported by this project: its config, not the file, knows the convention
        return None
    if author == "torchvision":  # detectron2's conversion of torchvision's ImageNet ResNets
        return TORCHVISION
    return CONVENTION_OF_FORMAT.get(source_format)


def load_checkpoint_into_model(model: nn.Module, checkpoint: dict, source: str, *, strict: bool = False) -> LoadReport:
    """Loads ``checkpoint["model"]`` (any supported naming) into ``model``.

    A tensor whose shape differs from the model's is skipped with a warning in a head (e.g. another
    NUM_CLASSES) and is an error in the backbone. With ``strict`` (evaluation) every model tensor
    must be loaded and every checkpoint tensor used. Weights whose input convention (BGR/RGB,
    normalisation, stride placement) differs from the model's config are refused with the config
    overrides that fit them.
    """
    state = checkpoint["model"]
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    bad = non_finite_tensors(state)
    if bad:
        raise CheckpointError(f"{source} holds NaN or infinite values in {len(bad)} of its {len(state)} tensors "
                              f"({group_keys(bad)}): it was saved by a diverged run; use an earlier checkpoint")
    source_format = naming.detect_format(state)
    state, dropped = naming.convert_to_ifr(state, source_format)
    own = model.state_dict()
    report = LoadReport(source, source_format, dropped=dropped, unexpected=sorted(set(state) - set(own)))
    if not set(state) & set(own):
        raise CheckpointError(f"{source} shares no parameter names with this model (first keys: "
                              f"{list(state)[:3]}); it is a checkpoint of a different model")
    convention = _convention_for(source_format, checkpoint.get("__author__"))
    mismatches = convention.mismatches(model) if convention is not None else []
    if mismatches:
        raise CheckpointError(f"{source} holds {convention.name} weights, but the model is configured differently: "
                              + "; ".join(mismatches) + ". Add these overrides: " + " ".join(convention.overrides()))
    absent = sorted(set(own) - set(state))
    matched = {}
    for key in sorted(set(state) & set(own)):
        theirs, ours = tuple(state[key].shape), tuple(own[key].shape)
        if theirs == ours:
            matched[key] = state[key]
        else:
            report.skipped_shapes.append((key, theirs, ours))
    backbone_mismatches = [s for s in report.skipped_shapes if s[0].startswith("backbone.")]
    if backbone_mismatches or (strict and (report.skipped_shapes or absent or report.unexpected)):
        problems = [f"{k}: {t} in the checkpoint, {o} in the model" for k, t, o in report.skipped_shapes]
        problems += [f"missing: {group_keys(absent)}"] if strict and absent else []
        problems += [f"unexpected: {group_keys(report.unexpected)}"] if strict and report.unexpected else []
        raise CheckpointError(f"{source} does not fit this model ({source_format} names): " + "; ".join(problems)
                              + ". Check that the experiment folder and its config (DEPTH, NUM_CLASSES, mask head) "
                              "match the checkpoint")
    model.load_state_dict(matched, strict=False)
    report.loaded = sorted(matched)
    report.missing = sorted(set(own) - set(matched))  # absent, or skipped for their shape
    report.log()
    return report


def export_cvpods_checkpoint(source: str, destination: str) -> int:
    """Writes the weights of checkpoint ``source`` (any supported naming) to ``destination`` in cvpods
    naming, as ``{"model": state_dict, "__author__": "ifr"}``, so the original code can load it.
    Returns the number of tensors written."""
    data = read_checkpoint(source)
    state = data["model"]
    state, _ = naming.convert_to_ifr(state, naming.detect_format(state))
    exported = naming.ifr_to_cvpods(state)
    write_atomically(destination, lambda temporary: torch.save({"model": exported, "__author__": EXPORT_AUTHOR},
                                                               temporary))
    return len(exported)
