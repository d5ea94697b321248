"""GroupNorm that keeps float32 precision in channels_last memory layout."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ShiftedGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (same parameters and state-dict names) that subtracts a per-(sample, group)
    constant from a channels_last input before normalising.

    Why: PyTorch's CPU GroupNorm kernel for channels_last inputs accumulates sum(x) and sum(x^2), so
    its float32 result loses precision as (group mean / group spread)^2 grows: on ``randn + 30`` it is
    off by ~1e-4 relative, forward and backward, against ~1e-6 for NCHW. GroupNorm is invariant to
    such a shift, so subtracting one value of each group (the group's mean at the first pixel: close
    to the group mean) leaves the exact result unchanged and restores NCHW-level precision, at the
    cost of one elementwise pass; the shift is detached because the output does not depend on it.
    NCHW inputs, and inputs on other devices (CUDA's kernel computes its statistics in NCHW order
    whatever the layout), go straight to the fused kernel.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.dim() == 4 and x.shape[0] > 0 and not x.is_contiguous() \
                and x.is_contiguous(memory_format=torch.channels_last):
            n, c = x.shape[:2]
            first = x[:, :, 0, 0].detach().reshape(n, self.num_groups, c // self.num_groups)
            shift = first.mean(dim=2, keepdim=True).expand(-1, -1, c // self.num_groups).reshape(n, c, 1, 1)
            x = x - shift
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
