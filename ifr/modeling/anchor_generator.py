"""cvpods' DefaultAnchorGenerator: unrounded cell anchors on a fixed-stride grid.

torchvision's AnchorGenerator rounds its base anchors and infers strides from the padded image size
(wrong for odd-sized levels), so it is not used here.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ifr.config import ConfigError


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> torch.Tensor:
    """(len(sizes) * len(aspect_ratios), 4) XYXY anchors centred on 0, size-major, ratio-minor.

    For size s and ratio a (= h / w): w = sqrt(s^2 / a), h = a * w, not rounded.
    """
    anchors = []
    for size in sizes:
        area = float(size) ** 2
        for ratio in aspect_ratios:
            w = math.sqrt(area / ratio)
            h = ratio * w
            anchors.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return torch.tensor(anchors, dtype=torch.float32)


class _BufferList(nn.Module):
    """Buffers named ``0``, ``1``, ... (state-dict keys ``cell_anchors.{i}`` as in cvpods)."""

    def __init__(self, buffers: Sequence[torch.Tensor]):
        super().__init__()
        for i, buffer in enumerate(buffers):
            self.register_buffer(str(i), buffer)

    def __len__(self) -> int:
        return len(self._buffers)

    def __iter__(self):
        return iter(self._buffers.values())


class DefaultAnchorGenerator(nn.Module):
    """Anchors for each feature level: for level l with stride s_l, cell anchors shifted to
    ``(j * s_l + offset * s_l, i * s_l + offset * s_l)`` for every grid location (i, j).

    ``sizes`` has one list per level (or one list for all levels); likewise ``aspect_ratios``.
    """

    def __init__(self, sizes: Sequence[Sequence[float]], aspect_ratios: Sequence[Sequence[float]],
                 strides: Sequence[int], offset: float = 0.0):
        super().__init__()
        num_levels = len(strides)
        sizes = list(sizes) * num_levels if len(sizes) == 1 else list(sizes)
        aspect_ratios = list(aspect_ratios) * num_levels if len(aspect_ratios) == 1 else list(aspect_ratios)
        if len(sizes) != num_levels or len(aspect_ratios) != num_levels:
            raise ConfigError(f"ANCHOR_GENERATOR.SIZES / ASPECT_RATIOS need 1 or {num_levels} entries "
                             f"(one per feature level), got {len(sizes)} / {len(aspect_ratios)}")
        if not 0.0 <= offset < 1.0:
            raise ConfigError(f"ANCHOR_GENERATOR.OFFSET must be in [0, 1), got {offset}")
        self.strides = list(strides)
        self.offset = offset
        self.cell_anchors = _BufferList([cell_anchors(s, a) for s, a in zip(sizes, aspect_ratios)])

    @property
    def num_anchors_per_location(self) -> list[int]:
        return [len(cells) for cells in self.cell_anchors]

    def forward(self, feature_sizes: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """[(H_l, W_l)] -> [(H_l * W_l * A_l, 4)] anchors, location-major, anchor-minor."""
        anchors = []
        for (height, width), stride, cells in zip(feature_sizes, self.strides, self.cell_anchors):
            device = cells.device
            shift_x = (torch.arange(width, device=device, dtype=torch.float32) + self.offset) * stride
            shift_y = (torch.arange(height, device=device, dtype=torch.float32) + self.offset) * stride
            yy, xx = torch.meshgrid(shift_y, shift_x, indexing="ij")
            shifts = torch.stack([xx, yy, xx, yy], dim=-1).reshape(-1, 1, 4)
            anchors.append((shifts + cells.view(1, -1, 4)).reshape(-1, 4))
        return anchors
