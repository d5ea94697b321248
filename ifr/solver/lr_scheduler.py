"""cvpods' WarmupMultiStepLR, stepped once per training iteration."""
from __future__ import annotations

from bisect import bisect_right
from typing import Sequence

import torch
from torch.optim.lr_scheduler import LRScheduler

from ifr.config import ConfigError


def warmup_multistep_factor(iteration: int, milestones: Sequence[int], gamma: float, warmup_factor: float,
                            warmup_iters: int, warmup_method: str = "linear") -> float:
    """LR multiplier at ``iteration``: warm-up (linear from ``warmup_factor`` to 1, or constant) times
    ``gamma ** (number of milestones <= iteration)``."""
    warmup = 1.0
    if iteration < warmup_iters:
        if warmup_method == "linear":
            alpha = iteration / warmup_iters
            warmup = warmup_factor * (1 - alpha) + alpha
        elif warmup_method == "constant":
            warmup = warmup_factor
        else:
            raise ConfigError(f"unknown warm-up method {warmup_method!r} (use 'linear' or 'constant')")
    return warmup * gamma ** bisect_right(list(milestones), iteration)


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
