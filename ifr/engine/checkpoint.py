"""Checkpoints in cvpods' format: ``{"model", "optimizer", "scheduler", "iteration"}`` files in the
output folder, ``last_checkpoint`` naming the newest, written atomically so a kill never leaves a
truncated file."""
from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import nn

from ifr.errors import UserError

logger = logging.getLogger(__name__)

# cvpods/detectron2 URL scheme for model-zoo files; they are never downloaded at run time.
MODEL_ZOO_PREFIX = "detectron2://"
MODEL_ZOO_URL = "https://dl.fbaipublicfiles.com/detectron2/"


class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable or does not fit the model."""


def resolve_weights_path(path: str) -> str:
    """``detectron2://X`` -> the local copy ``$IFR_CACHE/detectron2/X`` (default ~/.torch/iopath_cache)."""
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


def _load_file(path: str) -> dict:
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.endswith(".pkl"):
        raise CheckpointError(f"{path}: Caffe2/Detectron .pkl weights (e.g. MSRA R-50.pkl) are not supported yet; "
                              "start from a .pth checkpoint or from scratch (MODEL.WEIGHTS \"''\")")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (pickle / zip errors have many types)
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a {type(data).__name__}, not a state dict or checkpoint dict")
    return data if "model" in data else {"model": data}


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Loads matching tensors; skips shape mismatches and reports missing/unexpected keys.

    A state dict sharing no key with the model is an error (a checkpoint of another model, or
    original cvpods names that need converting), not a silent random initialisation.
    """
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    own = model.state_dict()
    matched = {k: v for k, v in state.items() if k in own}
    if not matched:
        raise CheckpointError(f"{source} shares no parameter names with this model (first keys: "
                              f"{list(state)[:3]}); it is a checkpoint of a different model")
    for k in [k for k, v in matched.items() if tuple(v.shape) != tuple(own[k].shape)]:
        logger.warning("skipping %s from %s: shape %s in the checkpoint, %s in the model", k, source,
                       tuple(matched[k].shape), tuple(own[k].shape))
        del matched[k]
    result = model.load_state_dict(matched, strict=False)
    if result.missing_keys:
        logger.warning("%d model tensors not in %s (keep their initialisation): %s", len(result.missing_keys),
                       source, ", ".join(result.missing_keys[:20]) + (" ..." if len(result.missing_keys) > 20 else ""))
    unexpected = sorted(set(state) - set(own))
    if unexpected:
        logger.warning("%d tensors of %s are not used by the model: %s", len(unexpected), source,
                       ", ".join(unexpected[:20]) + (" ..." if len(unexpected) > 20 else ""))


class Checkpointer:
    """Saves and restores the model plus any objects with ``state_dict``/``load_state_dict``."""

    def __init__(self, model: nn.Module, save_dir: str, save_to_disk: bool = True, **checkpointables: Any):
        self.model = model.module if hasattr(model, "module") else model
        self.save_dir = save_dir
        self.save_to_disk = save_to_disk
        self.checkpointables = checkpointables

    def save(self, name: str, **extra: Any) -> None:
        if not self.save_to_disk:
            return
        data = {"model": self.model.state_dict(), **{k: v.state_dict() for k, v in self.checkpointables.items()},
                **extra}
        os.makedirs(self.save_dir, exist_ok=True)
        path = os.path.join(self.save_dir, f"{name}.pth")
        temporary = path + ".tmp"
        torch.save(data, temporary)
        os.replace(temporary, path)
        marker = os.path.join(self.save_dir, "last_checkpoint")
        with open(marker + ".tmp", "w") as f:
            f.write(os.path.basename(path))
        os.replace(marker + ".tmp", marker)
        logger.info("saved checkpoint %s", path)

    def last_checkpoint(self) -> str | None:
        marker = os.path.join(self.save_dir, "last_checkpoint")
        if not os.path.isfile(marker):
            return None
        with open(marker) as f:
            path = os.path.join(self.save_dir, f.read().strip())
        return path if os.path.isfile(path) else None

    def load(self, path: str, with_state: bool = False) -> dict:
        """Loads the model from ``path`` (and optimizer/scheduler when ``with_state``); returns the
        remaining entries (e.g. ``iteration``)."""
        data = _load_file(resolve_weights_path(path))
        logger.info("loading checkpoint %s", path)
        load_model_state(self.model, data.pop("model"), path)
        for key, obj in self.checkpointables.items():
            state = data.pop(key, None)
            if with_state and state is not None:
                obj.load_state_dict(state)
            elif with_state:
                logger.warning("%s has no %s state; it starts fresh", path, key)
        return data

    def resume_or_load(self, path: str, resume: bool) -> dict:
        """With ``resume`` and a ``last_checkpoint`` in save_dir: restore everything from it.
        Otherwise load the model from ``path`` only (nothing if ``path`` is empty)."""
        last = self.last_checkpoint() if resume else None
        if last is not None:
            return self.load(last, with_state=True)
        if resume:
            logger.info("--resume: no checkpoint in %s, starting from MODEL.WEIGHTS", self.save_dir)
        return self.load(path, with_state=False) if path else {}
