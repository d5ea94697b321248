"""Optimizer and learning-rate schedule."""
from .build import build_gradient_clipper, build_lr_scheduler, build_optimizer, parameter_groups
from .lr_scheduler import WarmupMultiStepLR, warmup_multistep_factor

__all__ = ["WarmupMultiStepLR", "build_gradient_clipper", "build_lr_scheduler", "build_optimizer", "parameter_groups",
           "warmup_multistep_factor"]
