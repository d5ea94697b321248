"""SGD with cvpods' parameter groups, and the LR scheduler, from a config."""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from ifr.errors import UserError

from .lr_scheduler import WarmupMultiStepLR

NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.InstanceNorm2d,
              nn.LayerNorm, nn.LocalResponseNorm)


def parameter_groups(model: nn.Module, base_lr: float, weight_decay: float, weight_decay_norm: float,
                     bias_lr_factor: float = 1.0) -> list[dict]:
    """One group per trainable parameter: norm-layer parameters get ``weight_decay_norm``, biases
    ``base_lr * bias_lr_factor``; frozen and shared parameters are skipped / counted once."""
    groups, seen = [], set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            groups.append({"params": [param],
                           "lr": base_lr * (bias_lr_factor if name == "bias" else 1.0),
                           "weight_decay": weight_decay_norm if isinstance(module, NORM_TYPES) else weight_decay})
    return groups


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    opt = cfg.SOLVER.OPTIMIZER
    if opt.NAME not in ("D2SGD", "SGD"):
        raise UserError(f"SOLVER.OPTIMIZER.NAME {opt.NAME!r} is not supported; use 'D2SGD' (SGD with momentum)")
    groups = parameter_groups(model, opt.BASE_LR, opt.WEIGHT_DECAY, opt.WEIGHT_DECAY_NORM, opt.BIAS_LR_FACTOR)
    return torch.optim.SGD(groups, lr=opt.BASE_LR, momentum=opt.MOMENTUM)


def build_gradient_clipper(cfg) -> Callable[[Iterable[torch.Tensor]], None] | None:
    """SOLVER.CLIP_GRADIENTS: None when disabled, else a function clipping parameters' gradients by
    value (CLIP_TYPE "value") or by their total NORM_TYPE-norm (CLIP_TYPE "norm")."""
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if not clip.ENABLED:
        return None
    if clip.CLIP_TYPE == "value":
        return lambda params: torch.nn.utils.clip_grad_value_(params, clip.CLIP_VALUE)
    if clip.CLIP_TYPE == "norm":
        return lambda params: torch.nn.utils.clip_grad_norm_(params, clip.CLIP_VALUE, clip.NORM_TYPE)
    raise UserError(f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE must be 'value' or 'norm', got {clip.CLIP_TYPE!r}")


def build_lr_scheduler(cfg, optimizer: torch.optim.Optimizer) -> WarmupMultiStepLR:
    sched = cfg.SOLVER.LR_SCHEDULER
    if sched.NAME != "WarmupMultiStepLR":
        raise UserError(f"SOLVER.LR_SCHEDULER.NAME {sched.NAME!r} is not supported; use 'WarmupMultiStepLR'")
    return WarmupMultiStepLR(optimizer, sched.STEPS, sched.GAMMA, sched.WARMUP_FACTOR, sched.WARMUP_ITERS,
                             sched.WARMUP_METHOD)
