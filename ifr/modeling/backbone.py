"""ResNet + FPN backbone on torchvision's ResNet, FrozenBatchNorm2d and FeaturePyramidNetwork.

Output: an ordered dict ``{"p2": (N, C, H/4, W/4), ..., "p6": (N, C, H/64, W/64)}``; p6 is a stride-2
max-pool of p5 (cvpods' ``LastLevelMaxPool``). Parameter names are torchvision's (``body.layer1``,
``fpn.inner_blocks``); mapping cvpods' names onto them is the checkpoint loader's job.
"""
from __future__ import annotations

from collections import OrderedDict
from functools import partial

import torch
from torch import nn
from torchvision.models import resnet
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import FeaturePyramidNetwork, FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ifr.config import ConfigError

RESNET_BUILDERS = {18: resnet.resnet18, 34: resnet.resnet34, 50: resnet.resnet50, 101: resnet.resnet101}

NORM_LAYERS = {
    # cvpods' FrozenBN: y = (x - running_mean) / sqrt(running_var + 1e-5) * weight + bias, never updated.
    "FrozenBN": partial(FrozenBatchNorm2d, eps=1e-5),
    "BN": nn.BatchNorm2d,
    "GN": lambda channels: nn.GroupNorm(32, channels),
}

_STAGES = ("res2", "res3", "res4", "res5")
_TORCHVISION_STAGES = ("layer1", "layer2", "layer3", "layer4")


def _move_stride_to_1x1(net: resnet.ResNet) -> None:
    """MSRA/Caffe2 ResNets stride the first 1x1 conv of a stage; torchvision (v1.5) strides the 3x3."""
    for layer in (net.layer2, net.layer3, net.layer4):
        block = layer[0]
        if isinstance(block, resnet.Bottleneck):
            block.conv1.stride, block.conv2.stride = block.conv2.stride, (1, 1)


def _freeze(net: resnet.ResNet, freeze_at: int) -> None:
    """cvpods' FREEZE_AT: 1 freezes the stem, 2 the stem and res2, ... (0 freezes nothing)."""
    frozen = [net.conv1, net.bn1] if freeze_at >= 1 else []
    frozen += [getattr(net, name) for name in _TORCHVISION_STAGES[: max(freeze_at - 1, 0)]]
    for module in frozen:
        for p in module.parameters():
            p.requires_grad_(False)


class ResNetFPN(nn.Module):
    """Bottom-up ResNet (stages res2..res5 selected by ``in_features``) + top-down FPN + p6 max-pool."""

    def __init__(self, depth: int = 50, norm: str = "FrozenBN", stride_in_1x1: bool = True,
                 freeze_at: int = 2, in_features: tuple[str, ...] = _STAGES, out_channels: int = 256):
        super().__init__()
        if depth not in RESNET_BUILDERS:
            raise ConfigError(f"MODEL.RESNETS.DEPTH must be one of {sorted(RESNET_BUILDERS)}, got {depth}")
        if norm not in NORM_LAYERS:
            raise ConfigError(f"MODEL.RESNETS.NORM must be one of {sorted(NORM_LAYERS)}, got {norm!r}")
        unknown = set(in_features) - set(_STAGES)
        if unknown:
            raise ConfigError(f"MODEL.FPN.IN_FEATURES may only name {_STAGES}, got {sorted(unknown)}")
        net = RESNET_BUILDERS[depth](weights=None, norm_layer=NORM_LAYERS[norm])
        if stride_in_1x1:
            _move_stride_to_1x1(net)
        self.stride_in_1x1 = stride_in_1x1
        _freeze(net, freeze_at)
        stage_of = dict(zip(_TORCHVISION_STAGES, _STAGES))
        self.in_features = tuple(sorted(in_features))
        self.body = IntermediateLayerGetter(
            net, {tv: name for tv, name in stage_of.items() if name in self.in_features})
        widths = {name: getattr(net, tv)[-1].conv3.out_channels if depth >= 50 else
                  getattr(net, tv)[-1].conv2.out_channels for tv, name in stage_of.items()}
        self.fpn = FeaturePyramidNetwork([widths[name] for name in self.in_features], out_channels,
                                         extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels
        first_level = int(self.in_features[0][-1])
        self.out_features = tuple(f"p{first_level + i}" for i in range(len(self.in_features) + 1))
        self.strides = {name: 2 ** int(name[1:]) for name in self.out_features}

    def forward(self, images: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        pyramid = self.fpn(self.body(images))
        return OrderedDict(zip(self.out_features, pyramid.values()))


def build_resnet_fpn_backbone(cfg) -> ResNetFPN:
    resnets = cfg.MODEL.RESNETS
    return ResNetFPN(
        depth=resnets.DEPTH if resnets.DEPTH is not None else 50,
        norm=resnets.NORM,
        stride_in_1x1=resnets.STRIDE_IN_1X1,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
        in_features=tuple(cfg.MODEL.FPN.IN_FEATURES),
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
    )
