"""Checkpoints in cvpods' format: ``{"model", "optimizer", "scheduler", "iteration"}`` files in the
output folder, ``last_checkpoint`` naming the newest, written atomically so a kill never leaves a
truncated file."""
from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import nn

from ifr.checkpoint import CheckpointError, LoadReport, load_checkpoint_into_model, read_checkpoint

logger = logging.getLogger(__name__)

__all__ = ["CheckpointError", "Checkpointer"]


class Checkpointer:
    """Saves and restores the model plus any objects with ``state_dict``/``load_state_dict``."""

    def __init__(self, model: nn.Module, save_dir: str, save_to_disk: bool = True, **checkpointables: Any):
        self.model = model.module if hasattr(model, "module") else model
        self.save_dir = save_dir
        self.save_to_disk = save_to_disk
        self.checkpointables = checkpointables
        self.last_report: LoadReport | None = None

    def save(self, name: str, **extra: Any) -> None:
        """Writes ``<name>.pth``. Call on every process: checkpointables may gather across processes;
        only the one with ``save_to_disk`` writes."""
        data = {"model": self.model.state_dict(), **{k: v.state_dict() for k, v in self.checkpointables.items()},
                **extra}
        if not self.save_to_disk:
            return
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

    def load(self, path: str, with_state: bool = False, strict: bool = False) -> dict:
        """Loads the model from ``path`` (and optimizer/scheduler when ``with_state``); returns the
        remaining entries (e.g. ``iteration``). ``strict``: every tensor must fit (evaluation)."""
        data = read_checkpoint(path)
        logger.info("loading checkpoint %s", path)
        self.last_report = load_checkpoint_into_model(self.model, data, path, strict=strict)
        data.pop("model")
        data.pop("__author__", None)
        for key, obj in self.checkpointables.items():
            state = data.pop(key, None)
            if with_state and state is not None:
                obj.load_state_dict(state)
            elif with_state:
                logger.warning("%s has no %s state; it starts fresh", path, key)
        return data

    def resume_or_load(self, path: str, resume: bool, strict: bool = False) -> dict:
        """With ``resume`` and a ``last_checkpoint`` in save_dir: restore everything from it.
        Otherwise load the model from ``path`` only (nothing if ``path`` is empty)."""
        last = self.last_checkpoint() if resume else None
        if last is not None:
            return self.load(last, with_state=True, strict=strict)
        if resume:
            logger.info("--resume: no checkpoint in %s, starting from MODEL.WEIGHTS", self.save_dir)
        return self.load(path, with_state=False, strict=strict) if path else {}
