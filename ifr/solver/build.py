"""Optimizers and LR schedules chosen by name from the config (``OPTIMIZERS``, ``LR_SCHEDULERS``),
cvpods' parameter groups, and gradient clipping."""
from __future__ import annotations

import logging
from typing import Callable, Iterable

import torch
from torch import nn

from ifr.config import ConfigError, RCNNFPNConfig
from ifr.config.support import non_default

from .lr_scheduler import WarmupCosineLR, WarmupMultiStepLR

logger = logging.getLogger(__name__)

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


def _sgd(groups: list[dict], opt) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=opt.BASE_LR, momentum=opt.MOMENTUM)


def _adamw(groups: list[dict], opt) -> torch.optim.Optimizer:
    betas = tuple(opt.BETAS)
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ConfigError(f"SOLVER.OPTIMIZER.BETAS must be two numbers in [0, 1), got {opt.BETAS!r}")
    return torch.optim.AdamW(groups, lr=opt.BASE_LR, betas=betas, eps=opt.EPS, amsgrad=opt.AMSGRAD)


# name -> (builder(parameter groups, SOLVER.OPTIMIZER), the SOLVER.OPTIMIZER keys only it reads).
# Every optimizer uses cvpods' parameter groups (BASE_LR, WEIGHT_DECAY, WEIGHT_DECAY_NORM,
# BIAS_LR_FACTOR); cvpods' own AdamW ignores the last two, which here would be settings silently unread.
OPTIMIZERS: dict[str, tuple[Callable, tuple[str, ...]]] = {
    "D2SGD": (_sgd, ("MOMENTUM",)),
    "SGD": (_sgd, ("MOMENTUM",)),
    "AdamW": (_adamw, ("BETAS", "EPS", "AMSGRAD")),
}

# name -> (builder(optimizer, SOLVER.LR_SCHEDULER), the SOLVER.LR_SCHEDULER keys only it reads).
LR_SCHEDULERS: dict[str, tuple[Callable, tuple[str, ...]]] = {
    "WarmupMultiStepLR": (lambda optimizer, s: WarmupMultiStepLR(optimizer, s.STEPS, s.GAMMA, s.WARMUP_FACTOR,
                                                                 s.WARMUP_ITERS, s.WARMUP_METHOD), ("STEPS", "GAMMA")),
    "WarmupCosineLR": (lambda optimizer, s: WarmupCosineLR(optimizer, s.MAX_ITER, s.WARMUP_FACTOR, s.WARMUP_ITERS,
                                                           s.WARMUP_METHOD), ()),
}


def _choose(table: dict, name: str, node, defaults, key: str):
    """The builder ``name`` picks from ``table``; warns about settings only the other entries read."""
    if name not in table:
        raise ConfigError(f"{key}.NAME {name!r} is not available; choose one of {sorted(table)}")
    builder, own = table[name]
    others = {k for _, keys in table.values() for k in keys} - set(own)
    for unused in non_default(node, defaults, sorted(others), key):
        logger.warning("%s is set but %s does not read it", unused, name)
    return builder


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    opt = cfg.SOLVER.OPTIMIZER
    builder = _choose(OPTIMIZERS, opt.NAME, opt, RCNNFPNConfig().SOLVER.OPTIMIZER, "SOLVER.OPTIMIZER")
    return builder(parameter_groups(model, opt.BASE_LR, opt.WEIGHT_DECAY, opt.WEIGHT_DECAY_NORM,
                                    opt.BIAS_LR_FACTOR), opt)


def build_lr_scheduler(cfg, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    sched = cfg.SOLVER.LR_SCHEDULER
    builder = _choose(LR_SCHEDULERS, sched.NAME, sched, RCNNFPNConfig().SOLVER.LR_SCHEDULER, "SOLVER.LR_SCHEDULER")
    return builder(optimizer, sched)


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
    raise ConfigError(f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE must be 'value' or 'norm', got {clip.CLIP_TYPE!r}")
