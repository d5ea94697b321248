"""Checkpoints in cvpods' format: ``{"model", "optimizer", "scheduler", "iteration"}`` files in the
output folder, ``last_checkpoint`` naming the newest, written atomically so a kill never leaves a
truncated file, and never with non-finite weights (a diverged run keeps its last good checkpoint)."""
from __future__ import annotations

import glob
import logging
import math
import os
import re
from typing import Any

import torch
from torch import nn

from ifr.checkpoint import CheckpointError, LoadReport, load_checkpoint_into_model, read_checkpoint
from ifr.checkpoint.loading import group_keys, non_finite_tensors
from ifr.errors import TrainingDivergedError
from ifr.solver.resume import check_state_fits
from ifr.utils.atomic import open_atomically, write_atomically

logger = logging.getLogger(__name__)

# What a checkpoint written while the losses diverged is renamed to (kept, but never resumed from).
DIVERGED_SUFFIX = ".diverged"

__all__ = ["CheckpointError", "Checkpointer", "checkpoint_iteration", "non_finite_tensors", "training_checkpoints"]


def checkpoint_iteration(path: str, max_iter: float) -> float:
    """model_0004999.pth -> 4999 (iterations done); model_final.pth -> ``max_iter``."""
    match = re.fullmatch(r"model_(\d+)\.pth", os.path.basename(path))
    return int(match.group(1)) if match else max_iter


def training_checkpoints(folder: str) -> list[str]:
    """``model_*.pth`` files of a training run's folder, newest (highest iteration, final last) last."""
    return sorted(glob.glob(os.path.join(glob.escape(folder), "model_*.pth")),
                  key=lambda path: checkpoint_iteration(path, math.inf))


class Checkpointer:
    """Saves and restores the model plus any objects with ``state_dict``/``load_state_dict``."""

    def __init__(self, model: nn.Module, save_dir: str, save_to_disk: bool = True, **checkpointables: Any):
        self.model = model.module if hasattr(model, "module") else model
        self.save_dir = save_dir
        self.save_to_disk = save_to_disk
        self.checkpointables = checkpointables
        self.last_report: LoadReport | None = None
        # checkpoints this process saved or resumed from -> the iteration they were written after
        self.iterations: dict[str, int] = {}

    def save(self, name: str, **extra: Any) -> None:
        """Writes ``<name>.pth``. Call on every process: checkpointables may gather across processes;
        only the one with ``save_to_disk`` writes. Non-finite weights are never written: they raise
        ``TrainingDivergedError`` instead."""
        model_state = self.model.state_dict()
        bad = non_finite_tensors(model_state)
        if bad:
            raise TrainingDivergedError(
                f"the weights became non-finite ({len(bad)} of {len(model_state)} tensors: {group_keys(bad)}) and were "
                f"not saved as {name}.pth")
        data = {"model": model_state, **{k: v.state_dict() for k, v in self.checkpointables.items()}, **extra}
        if not self.save_to_disk:
            return
        path = os.path.join(self.save_dir, f"{name}.pth")
        try:
            write_atomically(path, lambda temporary: torch.save(data, temporary))
            self.point_marker_to(path)
        except (OSError, RuntimeError) as e:  # torch.save reports unwritable files as RuntimeError
            raise CheckpointError(f"cannot write checkpoint {path} ({e}): make {self.save_dir} writable or free disk "
                                  f"space (the checkpoints written before are intact). {self.continue_hint()}") from None
        self.iterations[path] = extra.get("iteration", -1)
        logger.info("saved checkpoint %s", path)

    def continue_hint(self) -> str:
        """How to continue from the last checkpoint this folder holds (said when a run stops)."""
        last = self.last_checkpoint()
        if last is None:
            return "No checkpoint was written yet: start again."
        return f"The last checkpoint is {last}: continue from it with --resume."

    def point_marker_to(self, path: str) -> None:
        """Makes ``last_checkpoint`` name ``path`` (the checkpoint ``--resume`` continues from)."""
        with open_atomically(os.path.join(self.save_dir, "last_checkpoint")) as f:
            f.write(os.path.basename(path))

    def set_aside(self, path: str) -> str:
        """Renames a checkpoint that must not be continued from (written while training diverged) to
        ``<path>.diverged``, which ``training_checkpoints`` does not list, and drops ``last_checkpoint``
        if it named it. Returns the new path."""
        if self.last_checkpoint() == path:
            os.remove(os.path.join(self.save_dir, "last_checkpoint"))
        os.replace(path, path + DIVERGED_SUFFIX)
        self.iterations.pop(path, None)
        logger.info("set %s aside as %s", path, path + DIVERGED_SUFFIX)
        return path + DIVERGED_SUFFIX

    def last_checkpoint(self) -> str | None:
        """The file ``last_checkpoint`` names, if it exists."""
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
                check_state_fits(obj, state, path)
                obj.load_state_dict(state)
            elif with_state:
                logger.warning("%s has no %s state; it starts fresh", path, key)
        return data

    def resume(self, strict: bool = False) -> tuple[str, dict] | None:
        """Restores everything from the checkpoint ``last_checkpoint`` names or, when the marker is
        missing, names a missing file or a file that cannot be loaded, from the newest loadable
        ``model_*.pth`` (saying which and why). None when the folder has no checkpoint at all."""
        named = self.last_checkpoint()
        candidates = ([named] if named else []) + [p for p in reversed(training_checkpoints(self.save_dir)) if p != named]
        if not candidates:
            return None
        marker = os.path.join(self.save_dir, "last_checkpoint")
        why = ("last_checkpoint names a file that is gone" if os.path.isfile(marker) else "there is no last_checkpoint") \
            if not named else None
        failures = []
        for path in candidates:
            try:
                extra = self.load(path, with_state=True, strict=strict)
            except CheckpointError as e:
                failures.append(f"{os.path.basename(path)}: {e}")
                logger.warning("cannot resume from %s (%s); trying an older checkpoint", path, e)
                why = f"{os.path.basename(path)} cannot be loaded"
                continue
            if why:
                logger.warning("--resume: %s, so resuming from %s, the newest checkpoint that loads", why, path)
            self.iterations[path] = extra.get("iteration", -1)
            return path, extra
        raise CheckpointError(f"--resume: none of the checkpoints in {self.save_dir} can be loaded "
                              f"({'; '.join(failures)}); start a new run in another OUTPUT_DIR")

    def resume_or_load(self, path: str, resume: bool, strict: bool = False) -> dict:
        """With ``resume`` and a checkpoint in save_dir: restore everything from it (see ``resume``).
        Otherwise load the model from ``path`` only (nothing if ``path`` is empty)."""
        resumed = self.resume(strict) if resume else None
        if resumed is not None:
            return resumed[1]
        if resume:
            logger.info("--resume: no checkpoint in %s, starting from MODEL.WEIGHTS", self.save_dir)
        return self.load(path, with_state=False, strict=strict) if path else {}
