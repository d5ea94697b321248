"""The IFR residual block: the map f(z, x) whose fixed point refines the RoI feature x."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .norm import ShiftedGroupNorm
from .weight_norm import WeightNormConv2d


class IFRBlock(nn.Module):
    """One application of IFR's residual block, f(z, x), as in the official mask head.

    ``u = z + x;  h = relu(gn1(conv1(u)));  h = gn2(conv2(h));  f = gn3(relu(h + u))``

    conv1/conv2 are 3x3, padding 1, without bias; gn1..gn3 are GroupNorm(num_groups, channels)
    (``ShiftedGroupNorm``: the same function, precise in channels_last layout too).
    With ``weight_norm=True`` the convs are ``WeightNormConv2d`` (parameters ``conv1.weight_g``,
    ``conv1.weight_v``, ...), as in the implicit IFR head; without it they are plain ``nn.Conv2d``
    (``conv1.weight``), as in the weight-sharing head.

    Shapes: z, x and the output are (N, channels, H, W). Samples are independent (GroupNorm
    normalises each sample on its own), which the batched solvers rely on.
    """

    def __init__(self, channels: int = 256, num_groups: int = 4, weight_norm: bool = False):
        super().__init__()
        if channels < 1 or num_groups < 1 or channels % num_groups:
            raise ValueError(f"IFRBlock: num_groups ({num_groups}) must be a positive divisor of channels "
                             f"({channels}): each GroupNorm normalises channels / num_groups channels together")
        conv = WeightNormConv2d if weight_norm else nn.Conv2d
        self.conv1 = conv(channels, channels, 3, padding=1, bias=False)
        self.gn1 = ShiftedGroupNorm(num_groups, channels)
        self.conv2 = conv(channels, channels, 3, padding=1, bias=False)
        self.gn2 = ShiftedGroupNorm(num_groups, channels)
        self.gn3 = ShiftedGroupNorm(num_groups, channels)

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        u = z + x
        h = F.relu(self.gn1(self.conv1(u)))
        h = self.gn2(self.conv2(h))
        return self.gn3(F.relu(h + u))
