"""A 2-D convolution whose weight is reparametrised as g * v / ||v|| (weight normalisation, dim 0)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class WeightNormConv2d(nn.Module):
    """Conv2d with parameters ``weight_g`` (C_out, 1, 1, 1) and ``weight_v`` (C_out, C_in, k, k).

    The names are those of ``torch.nn.utils.weight_norm`` and of the released IFR checkpoints, so
    their state dicts load unchanged. The effective weight is recomputed at every call, so it always
    reflects the current parameters (no stale cached weight, unlike the original implementation).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0,
                 bias: bool = False):
        super().__init__()
        reference = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, bias=bias)
        self.padding = padding
        direction = reference.weight.detach().clone()
        # g is registered first: the released checkpoints list weight_g before weight_v.
        self.weight_g = nn.Parameter(self._norm(direction))
        self.weight_v = nn.Parameter(direction)
        self.bias = nn.Parameter(reference.bias.detach().clone()) if bias else None

    @staticmethod
    def _norm(v: torch.Tensor) -> torch.Tensor:
        """Per-output-channel L2 norm of v, shaped (C_out, 1, 1, 1)."""
        return v.reshape(v.shape[0], -1).norm(dim=1).view(-1, 1, 1, 1)

    @property
    def weight(self) -> torch.Tensor:
        # Same operation order as the original WeightNorm, for bitwise parity with released weights.
        return self.weight_v * (self.weight_g / self._norm(self.weight_v))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, padding=self.padding)

    def extra_repr(self) -> str:
        out_c, in_c, k, _ = self.weight_v.shape
        return f"{in_c}, {out_c}, kernel_size={k}, padding={self.padding}, bias={self.bias is not None}"
