"""Single-image inference with an experiment's test-time preprocessing."""
from __future__ import annotations

import torch
from PIL import Image
from torch import nn
from torchvision.transforms.v2 import functional as F

from ifr.data.image_reader import to_rgb
from ifr.data.transforms import build_augmentation, to_format


class DefaultPredictor:
    """``predictor(image) -> instances``: the config's test resize and INPUT.FORMAT applied to a PIL
    image (any mode ``ifr.data.read_image`` reads, converted to RGB the same way), then the model;
    detections at the image's own size (``boxes`` (D, 4) XYXY, ``scores`` (D,), ``classes`` (D,),
    ``masks`` (D, H, W) bool)."""

    def __init__(self, cfg, model: nn.Module):
        self.model = model.eval()
        self.resize = build_augmentation(cfg.INPUT.AUG.TEST_PIPELINES)
        self.image_format = cfg.INPUT.FORMAT

    @torch.no_grad()
    def __call__(self, image: Image.Image) -> dict:
        image = to_rgb(image)
        tensor = to_format(F.pil_to_tensor(self.resize(image)), self.image_format)
        return self.model([{"image": tensor, "height": image.height, "width": image.width}])[0]["instances"]
