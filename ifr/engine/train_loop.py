"""The training loop: one optimisation step per iteration, hooks around it."""
from __future__ import annotations

import contextlib
import logging
import time
from typing import Callable, Iterable

import torch

from ifr.config import ConfigError
from ifr.errors import TrainingDivergedError
from ifr.utils import comm

from .events import EventStorage
from .hooks import HookBase

logger = logging.getLogger(__name__)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


class SimpleTrainer:
    """``run_step``: next batch -> ``model(batch, iteration=it)`` (a dict of losses) -> backward -> SGD step.

    With ``batch_subdivisions`` S > 1 the batch is run as S consecutive slices, each slice's losses
    divided by S, their gradients accumulated (under DDP, synchronised on the last slice only) before
    the one optimizer step: the same data, batch and LR, with 1/S of the activation memory.

    The global 0-based iteration is passed to the model explicitly, so iteration-dependent heads
    (IFR's unrolled-then-implicit schedule) see it, including after a resume. With
    ``mixed_precision`` the forward runs under autocast (float16 on GPU, bfloat16 on CPU) and the
    loss is scaled on GPU; the fixed-point solves keep float32 (see ``EquilibriumRefinement``).
    The logged losses are averaged over processes.
    """

    def __init__(self, model: torch.nn.Module, data_loader, optimizer: torch.optim.Optimizer,
                 grad_clipper: Callable[[Iterable[torch.Tensor]], None] | None = None, mixed_precision: bool = False,
                 batch_subdivisions: int = 1):
        if batch_subdivisions < 1:
            raise ConfigError(f"SOLVER.BATCH_SUBDIVISIONS must be >= 1, got {batch_subdivisions}")
        self.model, self.data_loader, self.optimizer = model, data_loader, optimizer
        self.batch_subdivisions = batch_subdivisions
        self.grad_clipper = grad_clipper
        self.device_type = model_device(model).type
        self.mixed_precision = mixed_precision
        # Loss scaling keeps float16 gradients from underflowing; bfloat16 (CPU) does not need it.
        self.grad_scaler = torch.amp.GradScaler(self.device_type) if mixed_precision and self.device_type == "cuda" \
            else None
        self.hooks: list[HookBase] = []
        self.iter = self.start_iter = self.max_iter = 0
        self.storage = EventStorage()

    def register_hooks(self, hooks: list[HookBase]) -> None:
        for hook in hooks:
            hook.trainer = self
        self.hooks.extend(hooks)

    def train(self, start_iter: int, max_iter: int) -> None:
        logger.info("Starting training from iteration %d", start_iter)
        self.iter, self.start_iter, self.max_iter = start_iter, start_iter, max_iter
        self.storage = EventStorage(start_iter)
        self.model.train()
        self._data_iter = iter(self.data_loader)
        for hook in self.hooks:
            hook.before_train()
        try:
            for self.iter in range(start_iter, max_iter):
                self.storage.iter = self.iter
                self.run_step()
                for hook in self.hooks:
                    hook.after_step()
        finally:
            for hook in self.hooks:
                hook.after_train()

    def run_step(self) -> None:
        start = time.perf_counter()
        batch = next(self._data_iter)
        data_time = time.perf_counter() - start
        self.optimizer.zero_grad(set_to_none=True)
        logged: dict[str, torch.Tensor] = {}
        for index, images in enumerate(self._slices(batch)):
            last = index == self.batch_subdivisions - 1
            sync = self.model.no_sync() if not last and hasattr(self.model, "no_sync") else contextlib.nullcontext()
            with sync:
                loss_dict = self._forward_backward(images)
            for name, value in loss_dict.items():
                logged[name] = logged.get(name, 0.0) + value.detach() / self.batch_subdivisions
        if self.grad_scaler is not None:
            self.grad_scaler.unscale_(self.optimizer)  # clip the true gradients
        if self.grad_clipper is not None:
            self.grad_clipper([p for g in self.optimizer.param_groups for p in g["params"]])
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()
        logged = comm.reduce_mean({"total_loss": sum(logged.values()), **logged})
        self.storage.put_scalars(data_time=data_time, time=time.perf_counter() - start, **logged)

    def _slices(self, batch) -> list:
        if self.batch_subdivisions == 1:
            return [batch]
        if len(batch) % self.batch_subdivisions:
            raise ConfigError(f"SOLVER.BATCH_SUBDIVISIONS ({self.batch_subdivisions}) must divide the "
                              f"{len(batch)} images each process takes per iteration")
        size = len(batch) // self.batch_subdivisions
        return [batch[i:i + size] for i in range(0, len(batch), size)]

    def _forward_backward(self, images: list[dict]) -> dict[str, torch.Tensor]:
        """Losses of one slice of the batch; their sum / BATCH_SUBDIVISIONS is back-propagated."""
        with torch.autocast(self.device_type, enabled=self.mixed_precision):
            loss_dict = self.model(images, iteration=self.iter)
        losses = sum(loss_dict.values())
        if not torch.isfinite(losses):
            raise TrainingDivergedError(
                f"loss became non-finite at iteration {self.iter}: {', '.join(f'{k}={v.item():.4g}' for k, v in loss_dict.items())} "
                "(lower SOLVER.OPTIMIZER.BASE_LR or lengthen SOLVER.LR_SCHEDULER.WARMUP_ITERS)")
        losses = losses / self.batch_subdivisions
        if self.grad_scaler is not None:
            self.grad_scaler.scale(losses).backward()
        else:
            losses.backward()
        return loss_dict
