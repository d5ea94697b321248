"""Small layers the heads share: Caffe2's MSRA initialisation and a 3x3 conv + norm + ReLU."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ifr.config import ConfigError

# A head's or the FPN's NORM key: "" (convolutions with bias, no norm) or "GN" (bias-free
# convolutions followed by GroupNorm with 32 groups, cvpods' get_norm("GN")).
CONV_NORMS = {"": None, "GN": lambda channels: nn.GroupNorm(32, channels)}


def conv_norm(name: str, key: str):
    """The norm-layer constructor (or None) of ``CONV_NORMS[name]``; ``key`` names the setting in errors."""
    if name not in CONV_NORMS:
        raise ConfigError(f"{key} must be one of {sorted(CONV_NORMS)}, got {name!r}")
    return CONV_NORMS[name]


def msra_fill(module: nn.Module) -> None:
    """Caffe2's MSRAFill: He-normal weights (fan_out, ReLU gain), zero bias."""
    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    if module.bias is not None:
        nn.init.zeros_(module.bias)


class Conv3x3NormReLU(nn.Conv2d):
    """relu(norm(conv3x3(x))), the norm optional; parameters ``weight`` (``bias`` without a norm) and
    ``norm.*``, as cvpods names a conv with a norm. MSRA-initialised."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "", key: str = "NORM"):
        make_norm = conv_norm(norm, key)
        super().__init__(in_channels, out_channels, kernel_size=3, padding=1, bias=make_norm is None)
        self.norm = make_norm(out_channels) if make_norm is not None else None
        msra_fill(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        return F.relu(self.norm(x) if self.norm is not None else x)
