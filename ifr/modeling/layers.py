"""Small layers the heads share: Caffe2's MSRA initialisation and a 3x3 conv + norm + ReLU."""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ifr.config import ConfigError

GN_GROUPS = 32  # cvpods' get_norm("GN")


def group_norm(channels: int, key: str = "GroupNorm", num_groups: int = GN_GROUPS) -> nn.GroupNorm:
    """``nn.GroupNorm(num_groups, channels)``; a ConfigError naming the ``key`` that asked for it
    when ``num_groups`` does not divide ``channels`` (instead of torch's message from deep inside)."""
    if channels % num_groups:
        raise ConfigError(f"{key} normalises in {num_groups} groups, which must divide the width of every layer it "
                          f"follows, but one is {channels} channels wide: make that width a multiple of {num_groups} "
                          "or choose another norm")
    return nn.GroupNorm(num_groups, channels)


# A head's or the FPN's NORM key: "" (convolutions with bias, no norm) or "GN" (bias-free
# convolutions followed by GroupNorm with 32 groups, cvpods' get_norm("GN")).
CONV_NORMS = {"": None, "GN": group_norm}


def conv_norm(name: str, key: str):
    """The norm-layer constructor ``channels -> module`` (or None) of ``CONV_NORMS[name]``; ``key``
    names the setting in errors."""
    if name not in CONV_NORMS:
        raise ConfigError(f"{key} must be one of {sorted(CONV_NORMS)}, got {name!r}")
    return partial(CONV_NORMS[name], key=f"{key} {name!r}") if CONV_NORMS[name] is not None else None


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
