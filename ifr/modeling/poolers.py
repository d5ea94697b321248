"""Multi-level RoIAlign (cvpods' ROIPooler) on ``torchvision.ops.roi_align``."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torchvision.ops import roi_align

from ifr.config import ConfigError

# Canonical box size and level of the FPN paper's level-assignment rule (eq. 1).
CANONICAL_BOX_SIZE = 224
CANONICAL_LEVEL = 4

# RoIAlignV2 is RoIAlign with the half-pixel correction (aligned=True), the cvpods default.
POOLER_ALIGNED = {"ROIAlignV2": True, "ROIAlign": False}


def assign_boxes_to_levels(boxes: torch.Tensor, min_level: int, max_level: int) -> torch.Tensor:
    """(R, 4) XYXY boxes -> (R,) level index in [0, max_level - min_level].

    ``floor(4 + log2(sqrt(area) / 224 + eps))`` exactly as cvpods computes it (torchvision adds its
    epsilon outside the log, which moves boxes just below a power-of-two boundary up one level).
    """
    sizes = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    levels = torch.floor(CANONICAL_LEVEL + torch.log2(sizes / CANONICAL_BOX_SIZE + 2.2204e-16))
    return (levels.clamp(min=min_level, max=max_level) - min_level).to(torch.int64)


class ROIPooler(nn.Module):
    """Pools (R, C, S, S) features for boxes given per image, each box from its FPN level."""

    def __init__(self, output_size: int, strides: Sequence[int], sampling_ratio: int = 0,
                 pooler_type: str = "ROIAlignV2"):
        super().__init__()
        if pooler_type not in POOLER_ALIGNED:
            raise ConfigError(f"POOLER_TYPE must be one of {sorted(POOLER_ALIGNED)}, got {pooler_type!r}")
        levels = [math.log2(s) for s in strides]
        if any(level != int(level) for level in levels) or levels != list(range(int(levels[0]), int(levels[-1]) + 1)):
            raise ConfigError(f"pooler strides must be consecutive powers of two, got {list(strides)}")
        self.output_size = output_size
        self.scales = [1.0 / s for s in strides]
        self.min_level, self.max_level = int(levels[0]), int(levels[-1])
        self.sampling_ratio = sampling_ratio
        self.aligned = POOLER_ALIGNED[pooler_type]

    def forward(self, features: Sequence[torch.Tensor], boxes: Sequence[torch.Tensor]) -> torch.Tensor:
        """features: [(N, C, H_l, W_l)] finest first; boxes: N tensors (R_i, 4) -> (sum R_i, C, S, S)."""
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)])
        out = features[0].new_zeros((len(rois), features[0].shape[1], self.output_size, self.output_size))
        if len(rois) == 0:
            return out
        levels = assign_boxes_to_levels(rois[:, 1:], self.min_level, self.max_level)
        for level, (feature, scale) in enumerate(zip(features, self.scales)):
            index = torch.nonzero(levels == level).squeeze(1)
            if index.numel():
                out[index] = roi_align(feature, rois[index], self.output_size, spatial_scale=scale,
                                       sampling_ratio=self.sampling_ratio, aligned=self.aligned).to(out.dtype)
        return out
