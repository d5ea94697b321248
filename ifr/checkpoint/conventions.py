"""The input conventions ImageNet and detection weights were trained with, and the check that a model
is configured the way its weights expect (the wrong convention runs, but computes nonsense)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from . import naming


@dataclass(frozen=True)
class InputConvention:
    """How a backbone's weights expect images and where its stage strides sit."""

    name: str
    input_format: str
    pixel_mean: tuple[float, float, float]
    pixel_std: tuple[float, float, float]
    stride_in_1x1: bool

    def overrides(self) -> list[str]:
        """The command-line ``KEY VALUE`` pairs that configure a model for these weights."""
        return ["INPUT.FORMAT", self.input_format,
                "MODEL.PIXEL_MEAN", repr(list(self.pixel_mean)), "MODEL.PIXEL_STD", repr(list(self.pixel_std)),
                "MODEL.RESNETS.STRIDE_IN_1X1", str(self.stride_in_1x1)]

    def mismatches(self, model: nn.Module) -> list[str]:
        """What in ``model`` differs from this convention (empty when it fits)."""
        found = []
        if getattr(model, "input_format", self.input_format) != self.input_format:
            found.append(f"INPUT.FORMAT is {model.input_format}, not {self.input_format}")
        for name, want in (("PIXEL_MEAN", self.pixel_mean), ("PIXEL_STD", self.pixel_std)):
            have = getattr(model, name.lower(), None)
            if have is not None and not torch.allclose(have.flatten().cpu(), torch.tensor(want), atol=1e-3):
                found.append(f"MODEL.{name} is {[round(x, 3) for x in have.flatten().tolist()]}, not {list(want)}")
        backbone = getattr(model, "backbone", None)
        stride_in_1x1 = getattr(backbone, "stride_in_1x1", self.stride_in_1x1)
        if stride_in_1x1 != self.stride_in_1x1:
            found.append(f"MODEL.RESNETS.STRIDE_IN_1X1 is {stride_in_1x1}, not {self.stride_in_1x1}")
        return found


# MSRA's Caffe2 ResNets and every cvpods model trained from them: BGR 0-255 minus the mean, the
# standard deviation folded into conv1, stride on the first 1x1 conv of a stage.
MSRA = InputConvention("MSRA/cvpods", "BGR", (103.530, 116.280, 123.675), (1.0, 1.0, 1.0), True)
# torchvision's ImageNet ResNets: RGB with ImageNet mean/std (here in 0-255 units), stride on the 3x3.
TORCHVISION = InputConvention("torchvision", "RGB", (123.675, 116.280, 103.530), (58.395, 57.120, 57.375), False)

CONVENTION_OF_FORMAT = {naming.CVPODS: MSRA, naming.CAFFE2: MSRA, naming.TORCHVISION_RESNET: TORCHVISION}
