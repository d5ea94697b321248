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

from .layers import GN_GROUPS, conv_norm, group_norm

# depth -> (block type, blocks per stage), as torchvision's resnet18 ... resnet152 build them.
RESNET_LAYOUTS = {18: (resnet.BasicBlock, [2, 2, 2, 2]), 34: (resnet.BasicBlock, [3, 4, 6, 3]),
                  50: (resnet.Bottleneck, [3, 4, 6, 3]), 101: (resnet.Bottleneck, [3, 4, 23, 3]),
                  152: (resnet.Bottleneck, [3, 8, 36, 3])}

NORM_LAYERS = {
    # cvpods' FrozenBN: y = (x - running_mean) / sqrt(running_var + 1e-5) * weight + bias, never updated.
    "FrozenBN": partial(FrozenBatchNorm2d, eps=1e-5),
    "BN": nn.BatchNorm2d,
    "GN": partial(group_norm, key="MODEL.RESNETS.NORM 'GN'"),
}

_STAGES = ("res2", "res3", "res4", "res5")
_TORCHVISION_STAGES = ("layer1", "layer2", "layer3", "layer4")


def _bottleneck_widths(num_groups: int, width_per_group: int) -> list[int]:
    """The 3x3 convolutions' widths of res2..res5 in torchvision's Bottleneck (its formula)."""
    return [int(planes * (width_per_group / 64.0)) * num_groups for planes in (64, 128, 256, 512)]


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
    """Bottom-up ResNet or ResNeXt (stages res2..res5 selected by ``in_features``) + top-down FPN +
    p6 max-pool.

    ``num_groups`` x ``width_per_group`` are the 3x3 convolutions' groups and per-group width
    (1 x 64: ResNet; 32 x 4: ResNeXt-50 32x4d, torchvision's ``resnext50_32x4d``). With
    ``zero_init_residual`` the last norm of every residual branch starts at zero (torchvision's flag;
    it matters only for weights that are not loaded from a checkpoint).
    """

    def __init__(self, depth: int = 50, norm: str = "FrozenBN", stride_in_1x1: bool = True,
                 freeze_at: int = 2, in_features: tuple[str, ...] = _STAGES, out_channels: int = 256,
                 num_groups: int = 1, width_per_group: int = 64, zero_init_residual: bool = False,
                 fpn_norm: str = ""):
        super().__init__()
        if depth not in RESNET_LAYOUTS:
            raise ConfigError(f"MODEL.RESNETS.DEPTH must be one of {sorted(RESNET_LAYOUTS)}, got {depth}")
        if norm not in NORM_LAYERS:
            raise ConfigError(f"MODEL.RESNETS.NORM must be one of {sorted(NORM_LAYERS)}, got {norm!r}")
        fpn_norm_layer = conv_norm(fpn_norm, "MODEL.FPN.NORM")
        unknown = set(in_features) - set(_STAGES)
        if unknown:
            raise ConfigError(f"MODEL.FPN.IN_FEATURES may only name {_STAGES}, got {sorted(unknown)}")
        block, layers = RESNET_LAYOUTS[depth]
        if block is resnet.BasicBlock and (num_groups, width_per_group) != (1, 64):
            raise ConfigError(f"ResNet-{depth} has basic blocks, which have no groups: MODEL.RESNETS.NUM_GROUPS 1 "
                              f"and WIDTH_PER_GROUP 64 (got {num_groups} and {width_per_group}); ResNeXt needs "
                              "DEPTH 50 or more")
        if num_groups < 1 or width_per_group < 1:
            raise ConfigError(f"MODEL.RESNETS.NUM_GROUPS and WIDTH_PER_GROUP must be positive, got {num_groups} "
                              f"and {width_per_group}")
        widths = _bottleneck_widths(num_groups, width_per_group) if block is resnet.Bottleneck else []
        if norm == "GN" and any(w % GN_GROUPS for w in widths):
            raise ConfigError(f"MODEL.RESNETS.NORM 'GN' normalises in {GN_GROUPS} groups, but NUM_GROUPS {num_groups} "
                              f"x WIDTH_PER_GROUP {width_per_group} makes the 3x3 convolutions of res2..res5 "
                              f"{', '.join(map(str, widths))} channels wide, not all multiples of {GN_GROUPS}: choose "
                              f"NUM_GROUPS x WIDTH_PER_GROUP a multiple of {GN_GROUPS} (e.g. 32 x 4, or 1 x 64 for "
                              "ResNet), or NORM FrozenBN / BN")
        net = resnet.ResNet(block, layers, groups=num_groups, width_per_group=width_per_group,
                            norm_layer=NORM_LAYERS[norm], zero_init_residual=zero_init_residual)
        if stride_in_1x1:
            _move_stride_to_1x1(net)
        self.stride_in_1x1 = stride_in_1x1
        _freeze(net, freeze_at)
        stage_of = dict(zip(_TORCHVISION_STAGES, _STAGES))
        self.in_features = tuple(sorted(in_features))
        self.body = IntermediateLayerGetter(
            net, {tv: name for tv, name in stage_of.items() if name in self.in_features})
        self.stage_widths = {name: getattr(net, tv)[-1].conv3.out_channels if block is resnet.Bottleneck else
                             getattr(net, tv)[-1].conv2.out_channels for tv, name in stage_of.items()}
        self.fpn = FeaturePyramidNetwork([self.stage_widths[name] for name in self.in_features], out_channels,
                                         extra_blocks=LastLevelMaxPool(), norm_layer=fpn_norm_layer)
        self.out_channels = out_channels
        first_level = int(self.in_features[0][-1])
        self.out_features = tuple(f"p{first_level + i}" for i in range(len(self.in_features) + 1))
        self.strides = {name: 2 ** int(name[1:]) for name in self.out_features}

    def forward(self, images: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        pyramid = self.fpn(self.body(images))
        return OrderedDict(zip(self.out_features, pyramid.values()))


def build_resnet_fpn_backbone(cfg) -> ResNetFPN:
    resnets, fpn = cfg.MODEL.RESNETS, cfg.MODEL.FPN
    missing = sorted(set(fpn.IN_FEATURES) - set(resnets.OUT_FEATURES))
    if missing:
        raise ConfigError(f"MODEL.FPN.IN_FEATURES {list(fpn.IN_FEATURES)} needs stages {missing} that "
                          f"MODEL.RESNETS.OUT_FEATURES {list(resnets.OUT_FEATURES)} does not output")
    backbone = ResNetFPN(
        depth=resnets.DEPTH if resnets.DEPTH is not None else 50,
        norm=resnets.NORM,
        stride_in_1x1=resnets.STRIDE_IN_1X1,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
        in_features=tuple(fpn.IN_FEATURES),
        out_channels=fpn.OUT_CHANNELS,
        num_groups=resnets.NUM_GROUPS,
        width_per_group=resnets.WIDTH_PER_GROUP,
        zero_init_residual=resnets.ZERO_INIT_RESIDUAL,
        fpn_norm=fpn.NORM,
    )
    # torchvision fixes res2's width (256 for bottleneck trunks, 64 for basic blocks); cvpods makes it a key.
    if backbone.stage_widths["res2"] != resnets.RES2_OUT_CHANNELS:
        raise ConfigError(f"MODEL.RESNETS.RES2_OUT_CHANNELS {resnets.RES2_OUT_CHANNELS} does not match this trunk, "
                          f"whose res2 has {backbone.stage_widths['res2']} channels: set it to "
                          f"{backbone.stage_widths['res2']}")
    return backbone
