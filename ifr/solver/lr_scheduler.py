"""cvpods' warm-up LR schedules, stepped once per training iteration."""
from __future__ import annotations

import math
from bisect import bisect_right
from typing import Sequence

import torch
from torch.optim.lr_scheduler import LRScheduler

from ifr.config import ConfigError

WARMUP_METHODS = ("linear", "constant")


def warmup_factor_at(iteration: int, warmup_factor: float, warmup_iters: int, warmup_method: str = "linear") -> float:
    """LR multiplier of the warm-up at ``iteration``: linear from ``warmup_factor`` to 1 over
    ``warmup_iters`` iterations, or ``warmup_factor`` throughout them (constant); 1 afterwards."""
    if warmup_method not in WARMUP_METHODS:
        raise ConfigError(f"SOLVER.LR_SCHEDULER.WARMUP_METHOD must be one of {WARMUP_METHODS}, got {warmup_method!r}")
    if iteration >= warmup_iters:
        return 1.0
    if warmup_method == "constant":
        return warmup_factor
    alpha = iteration / warmup_iters
    return warmup_factor * (1 - alpha) + alpha


def warmup_multistep_factor(iteration: int, milestones: Sequence[int], gamma: float, warmup_factor: float,
                            warmup_iters: int, warmup_method: str = "linear") -> float:
    """LR multiplier at ``iteration``: the warm-up times ``gamma ** (number of milestones <= iteration)``."""
    return (warmup_factor_at(iteration, warmup_factor, warmup_iters, warmup_method)
            * gamma ** bisect_right(list(milestones), iteration))


def warmup_cosine_factor(iteration: int, max_iter: int, warmup_factor: float, warmup_iters: int,
                         warmup_method: str = "linear") -> float:
    """LR multiplier at ``iteration``: the warm-up times the half cosine 0.5 (1 + cos(pi it / max_iter))
    (cvpods multiplies the two rather than starting the cosine after the warm-up)."""
    cosine = 0.5 * (1.0 + math.cos(math.pi * iteration / max_iter))
    return warmup_factor_at(iteration, warmup_factor, warmup_iters, warmup_method) * cosine


class WarmupMultiStepLR(LRScheduler):
    def __init__(self, optimizer: torch.optim.Optimizer, milestones: Sequence[int], gamma: float = 0.1,
                 warmup_factor: float = 0.001, warmup_iters: int = 1000, warmup_method: str = "linear",
                 last_epoch: int = -1):
        if list(milestones) != sorted(milestones):
            raise ConfigError(f"SOLVER.LR_SCHEDULER.STEPS must be increasing, got {list(milestones)}")
        self.milestones = list(milestones)
        self.gamma, self.warmup_factor = gamma, warmup_factor
        self.warmup_iters, self.warmup_method = warmup_iters, warmup_method
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        factor = warmup_multistep_factor(self.last_epoch, self.milestones, self.gamma, self.warmup_factor,
                                         self.warmup_iters, self.warmup_method)
        return [base_lr * factor for base_lr in self.base_lrs]


class WarmupCosineLR(LRScheduler):
    def __init__(self, optimizer: torch.optim.Optimizer, max_iter: int, warmup_factor: float = 0.001,
                 warmup_iters: int = 1000, warmup_method: str = "linear", last_epoch: int = -1):
        if max_iter < 1:
            raise ConfigError(f"SOLVER.LR_SCHEDULER.MAX_ITER must be positive, got {max_iter}")
        self.max_iter, self.warmup_factor = max_iter, warmup_factor
        self.warmup_iters, self.warmup_method = warmup_iters, warmup_method
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        factor = warmup_cosine_factor(self.last_epoch, self.max_iter, self.warmup_factor, self.warmup_iters,
                                      self.warmup_method)
        return [base_lr * factor for base_lr in self.base_lrs]
