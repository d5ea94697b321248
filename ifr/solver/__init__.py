"""Optimizers and learning-rate schedules, chosen by name."""
from .build import (LR_SCHEDULERS, OPTIMIZERS, build_gradient_clipper, build_lr_scheduler, build_optimizer,
                    parameter_groups)
from .lr_scheduler import WarmupCosineLR, WarmupMultiStepLR, warmup_cosine_factor, warmup_multistep_factor

__all__ = ["LR_SCHEDULERS", "OPTIMIZERS", "WarmupCosineLR", "WarmupMultiStepLR", "build_gradient_clipper",
           "build_lr_scheduler", "build_optimizer", "parameter_groups", "warmup_cosine_factor",
           "warmup_multistep_factor"]
