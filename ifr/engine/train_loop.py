"""The training loop: one optimisation step per iteration, hooks around it."""
from __future__ import annotations

import logging
import time

from typing import Callable, Iterable

import torch

from ifr.errors import TrainingDivergedError

from .events import EventStorage
from .hooks import HookBase

logger = logging.getLogger(__name__)


class SimpleTrainer:
    """``run_step``: next batch -> ``model(batch, iteration=it)`` (a dict of losses) -> backward -> SGD step.

    The global 0-based iteration is passed to the model explicitly, so iteration-dependent heads
    (IFR's unrolled-then-implicit schedule) see it, including after a resume.
    """

    def __init__(self, model: torch.nn.Module, data_loader, optimizer: torch.optim.Optimizer,
                 grad_clipper: Callable[[Iterable[torch.Tensor]], None] | None = None):
        self.model, self.data_loader, self.optimizer = model, data_loader, optimizer
        self.grad_clipper = grad_clipper
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
        loss_dict = self.model(batch, iteration=self.iter)
        losses = sum(loss_dict.values())
        if not torch.isfinite(losses):
            raise TrainingDivergedError(f"loss became non-finite at iteration {self.iter}: "
                                     f"{ {k: float(v) for k, v in loss_dict.items()} }; lower "
                                     "SOLVER.OPTIMIZER.BASE_LR or lengthen SOLVER.LR_SCHEDULER.WARMUP_ITERS")
        self.optimizer.zero_grad(set_to_none=True)
        losses.backward()
        if self.grad_clipper is not None:
            self.grad_clipper([p for g in self.optimizer.param_groups for p in g["params"]])
        self.optimizer.step()
        self.storage.put_scalars(total_loss=losses, data_time=data_time, time=time.perf_counter() - start,
                                 **loss_dict)
