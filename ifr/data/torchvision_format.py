"""Mapped records in torchvision's detection format (for ``ifr.integrations.torchvision``)."""
from __future__ import annotations

import torch


def as_torchvision_sample(mapped: dict, image_format: str = "BGR") -> tuple[torch.Tensor, dict]:
    """A ``DatasetMapper`` output -> (image (3, H, W) float RGB in [0, 1], target) as torchvision's
    detection models take them: ``boxes`` (N, 4) xyxy, ``labels`` (N,) with 0 for the background (so
    contiguous class k is label k + 1), ``masks`` (N, H, W) uint8."""
    image = mapped["image"].flip(0) if image_format == "BGR" else mapped["image"]
    instances = mapped.get("instances", {})
    target = {"boxes": instances.get("boxes", torch.zeros((0, 4))).float(),
              "labels": instances.get("classes", torch.zeros((0,), dtype=torch.int64)) + 1}
    if "masks" in instances:
        target["masks"] = instances["masks"].to(torch.uint8)
    return image.float() / 255.0, target
