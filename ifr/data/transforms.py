"""Augmentations named in INPUT.AUG.{TRAIN,TEST}_PIPELINES, as torchvision transforms.v2.

Each pipeline entry is ``(name, kwargs)``; ``AUGMENTATIONS`` maps cvpods' names to builders.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F
from torchvision.transforms.v2._utils import query_size

from ifr.errors import UserError


def shortest_edge_size(height: int, width: int, short_edge: int, max_size: int) -> tuple[int, int]:
    """cvpods' ResizeShortestEdge output size: scale the short side to ``short_edge``, cap the long
    side at ``max_size``, round half up (torchvision floors, e.g. 480x640 -> 800x1066 instead of 1067)."""
    scale = short_edge / min(height, width)
    new_h, new_w = (short_edge, scale * width) if height < width else (scale * height, short_edge)
    if max(new_h, new_w) > max_size:
        shrink = max_size / max(new_h, new_w)
        new_h, new_w = new_h * shrink, new_w * shrink
    return int(new_h + 0.5), int(new_w + 0.5)


class ResizeShortestEdge(v2.Transform):
    """Resizes so the short edge is one of ``short_edge_length`` ("choice") or a random integer in
    its [min, max] ("range"), the long edge at most ``max_size``; bilinear for images (PIL images
    are resized by PIL, as cvpods does), nearest for masks."""

    def __init__(self, short_edge_length: int | Sequence[int], max_size: int = 1333, sample_style: str = "range"):
        super().__init__()
        if sample_style not in ("range", "choice"):
            raise UserError(f"ResizeShortestEdge sample_style must be 'range' or 'choice', got {sample_style!r}")
        lengths = (short_edge_length,) if isinstance(short_edge_length, int) else tuple(short_edge_length)
        if sample_style == "range" and len(lengths) != 2:
            raise UserError(f"ResizeShortestEdge with sample_style 'range' needs (min, max), got {lengths}")
        self.lengths, self.max_size, self.sample_style = lengths, max_size, sample_style

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        # Drawn from torch's generator, which the data loader seeds per sample (as the flips are):
        # the scale then depends on the sample's seed alone, not on the worker or its history.
        height, width = query_size(flat_inputs)
        if self.sample_style == "range":
            short = int(torch.randint(self.lengths[0], self.lengths[1] + 1, ()))
        else:
            short = self.lengths[int(torch.randint(len(self.lengths), ()))]
        return {"size": list(shortest_edge_size(height, width, short, self.max_size))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.resize, inpt, params["size"], interpolation=v2.InterpolationMode.BILINEAR,
                                 antialias=True)


AUGMENTATIONS = {
    "ResizeShortestEdge": ResizeShortestEdge,
    "RandomFlip": lambda prob=0.5, horizontal=True, vertical=False: (
        v2.RandomHorizontalFlip(prob) if horizontal and not vertical else v2.RandomVerticalFlip(prob)),
}


def build_augmentation(pipeline: Sequence[tuple[str, dict]]) -> v2.Transform:
    transforms = []
    for entry in pipeline:
        name, kwargs = entry[0], dict(entry[1]) if len(entry) > 1 else {}
        if name not in AUGMENTATIONS:
            raise UserError(f"unknown augmentation {name!r} in INPUT.AUG; available: {sorted(AUGMENTATIONS)}")
        try:
            transforms.append(AUGMENTATIONS[name](**kwargs))
        except TypeError as e:
            raise UserError(f"bad arguments for augmentation {name}: {e}") from e
    return v2.Compose(transforms) if transforms else v2.Identity()


def to_format(image: torch.Tensor, image_format: str) -> torch.Tensor:
    """(3, H, W) RGB uint8 -> the model's INPUT.FORMAT ("BGR" or "RGB")."""
    if image_format == "BGR":
        return image.flip(0)
    if image_format == "RGB":
        return image
    raise UserError(f"INPUT.FORMAT must be 'BGR' or 'RGB', got {image_format!r}")
