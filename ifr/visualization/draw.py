"""Detections drawn on an image with torchvision's drawing utilities."""
from __future__ import annotations

from typing import Sequence

import torch
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

# Distinct colours cycled over class ids (matplotlib's "tab10").
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")


def draw_instances(image: torch.Tensor, instances: dict, class_names: Sequence[str] | None = None,
                   score_threshold: float = 0.5, mask_alpha: float = 0.5) -> torch.Tensor:
    """(3, H, W) uint8 RGB image + detections at that size -> (3, H, W) uint8 with the masks filled,
    the boxes outlined and labelled ``"<class> <score>"``, for detections scoring >= score_threshold."""
    keep = instances["scores"] >= score_threshold
    classes = instances["classes"][keep].tolist()
    scores = instances["scores"][keep].tolist()
    colors = [PALETTE[c % len(PALETTE)] for c in classes]
    out = image
    if "masks" in instances and keep.any():
        out = draw_segmentation_masks(out, instances["masks"][keep].cpu(), alpha=mask_alpha, colors=colors)
    if keep.any():
        names = [class_names[c] if class_names is not None and c < len(class_names) else f"class {c}"
                 for c in classes]
        out = draw_bounding_boxes(out, instances["boxes"][keep].cpu(), colors=colors, width=2,
                                  labels=[f"{n} {s:.2f}" for n, s in zip(names, scores)])
    return out
