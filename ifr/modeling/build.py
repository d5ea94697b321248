"""Assembles a GeneralizedRCNN from a config; experiment folders' net.py choose the heads."""
from __future__ import annotations

from typing import Callable

from torch import nn

from ifr.config import ConfigError

from .backbone import build_resnet_fpn_backbone
from .mask_head import MASK_HEADS
from .meta_arch import GeneralizedRCNN
from .cascade_roi_heads import build_cascade_roi_heads
from .roi_heads import build_standard_roi_heads
from .rpn import build_rpn


ROI_HEADS = {"standard": build_standard_roi_heads, "cascade": build_cascade_roi_heads}


def _lookup(kind: str, registry: dict, choice):
    if not isinstance(choice, str):
        return choice
    if choice not in registry:
        raise ConfigError(f"unknown {kind} {choice!r}; choose one of {sorted(registry)}")
    return registry[choice]


def build_generalized_rcnn(cfg, *, mask_head: str | Callable | None = "conv",
                           roi_heads: str | Callable = "standard") -> GeneralizedRCNN:
    """ResNet-FPN backbone + RPN + ROI heads + (with MODEL.MASK_ON) a mask head.

    ``roi_heads`` is a key of ``ROI_HEADS`` ("standard", "cascade") or a builder
    ``(cfg, in_channels, strides, mask_head_module) -> nn.Module``; ``mask_head`` a key of
    ``MASK_HEADS`` ("conv", "weight_sharing", "ifr") or a builder ``(cfg, in_channels) -> nn.Module``.
    """
    backbone = build_resnet_fpn_backbone(cfg)
    strides = backbone.strides
    head_module: nn.Module | None = None
    if cfg.MODEL.MASK_ON and mask_head is not None:
        head_module = _lookup("mask head", MASK_HEADS, mask_head)(cfg, backbone.out_channels)
    return GeneralizedRCNN(
        backbone, build_rpn(cfg, backbone.out_channels, strides),
        _lookup("ROI heads", ROI_HEADS, roi_heads)(cfg, backbone.out_channels, strides, head_module),
        pixel_mean=cfg.MODEL.PIXEL_MEAN, pixel_std=cfg.MODEL.PIXEL_STD, input_format=cfg.INPUT.FORMAT,
        size_divisibility=32)
