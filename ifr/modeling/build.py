"""Assembles a GeneralizedRCNN from a config; experiment folders' net.py choose the heads."""
from __future__ import annotations

from typing import Callable

from torch import nn

from ifr.config import ConfigError

from .backbone import build_resnet_fpn_backbone
from .mask_head import MASK_HEADS
from .meta_arch import GeneralizedRCNN
from .roi_heads import build_standard_roi_heads
from .rpn import build_rpn


def build_generalized_rcnn(cfg, *, mask_head: str | Callable | None = "conv",
                           roi_heads: Callable = build_standard_roi_heads) -> GeneralizedRCNN:
    """ResNet-FPN backbone + RPN + ``roi_heads(cfg, in_channels, strides, mask_head_module)``.

    ``mask_head`` is a key of ``MASK_HEADS`` ("conv", "weight_sharing", "ifr") or a builder
    ``(cfg, in_channels) -> nn.Module``; it is only built when MODEL.MASK_ON is true.
    """
    backbone = build_resnet_fpn_backbone(cfg)
    strides = backbone.strides
    head_module: nn.Module | None = None
    if cfg.MODEL.MASK_ON and mask_head is not None:
        if isinstance(mask_head, str):
            if mask_head not in MASK_HEADS:
                raise ConfigError(f"unknown mask head {mask_head!r}; choose one of {sorted(MASK_HEADS)}")
            mask_head = MASK_HEADS[mask_head]
        head_module = mask_head(cfg, backbone.out_channels)
    return GeneralizedRCNN(
        backbone, build_rpn(cfg, backbone.out_channels, strides),
        roi_heads(cfg, backbone.out_channels, strides, head_module),
        pixel_mean=cfg.MODEL.PIXEL_MEAN, pixel_std=cfg.MODEL.PIXEL_STD, size_divisibility=32)
