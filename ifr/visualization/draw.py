"""Detections drawn on an image, legible at any image size: tiny images are enlarged for display, the
line width and the TrueType label font (matplotlib's DejaVu Sans) scale with the picture, masks are
filled and outlined, labels sit on a box of their class colour."""
from __future__ import annotations

import math
import os
from typing import Sequence

import matplotlib
import numpy as np
import torch
import torch.nn.functional as nnf
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

# Distinct colours cycled over class ids (matplotlib's "tab10").
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")
# Pictures whose short side is below this are enlarged by a whole factor to reach it (labels stay readable).
DISPLAY_MIN_SIDE = 480
FONT_PATH = os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf")


def display_scale(height: int, width: int, min_side: int = DISPLAY_MIN_SIDE) -> int:
    """The whole factor that brings the short side to at least ``min_side`` (1 for larger images)."""
    return max(1, math.ceil(min_side / max(min(height, width), 1)))


def line_width(height: int, width: int) -> int:
    """Box and outline width in pixels: about 1/240 of the short side, at least 2."""
    return max(2, round(min(height, width) / 240))


def font_size(height: int, width: int) -> int:
    """Label font size in pixels: about 1/32 of the short side, at least 12."""
    return max(12, round(min(height, width) / 32))


def mask_outlines(masks: torch.Tensor, width: int) -> torch.Tensor:
    """(N, H, W) bool masks -> (N, H, W) bool: the pixels of each mask within ``width`` of its border."""
    if masks.numel() == 0:
        return masks
    inside = masks.float().unsqueeze(1)
    # erosion: a pixel stays inside when its whole (2 * width + 1)-square neighbourhood is inside
    eroded = -nnf.max_pool2d(-inside, 2 * width + 1, stride=1, padding=width)
    return (inside - eroded).squeeze(1) > 0


def _draw_labels(image: torch.Tensor, boxes: torch.Tensor, labels: list[str], colors: list[str],
                 size: int) -> torch.Tensor:
    """White text on a box of the detection's colour, above the box's top-left corner (inside it when
    there is no room above), kept within the picture."""
    picture = Image.fromarray(image.permute(1, 2, 0).numpy())
    draw = ImageDraw.Draw(picture)
    font = ImageFont.truetype(FONT_PATH, size)
    pad = max(1, size // 6)
    for (x0, y0, _, _), text, color in zip(boxes.tolist(), labels, colors):
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        w, h = right - left + 2 * pad, bottom - top + 2 * pad
        x = min(max(0, int(x0)), max(0, picture.width - w))
        y = int(y0) - h if y0 - h >= 0 else min(max(0, int(y0)), max(0, picture.height - h))
        draw.rectangle((x, y, x + w, y + h), fill=color)
        draw.text((x + pad - left, y + pad - top), text, fill="white", font=font)
    return torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1)


def draw_instances(image: torch.Tensor, instances: dict, class_names: Sequence[str] | None = None,
                   score_threshold: float = 0.5, mask_alpha: float = 0.45,
                   min_side: int = DISPLAY_MIN_SIDE) -> torch.Tensor:
    """(3, H, W) uint8 RGB image + detections at that size -> (3, s*H, s*W) uint8, s =
    ``display_scale(H, W, min_side)`` (pixels repeated, so nothing is invented): masks filled and
    outlined, boxes outlined and labelled ``"<class> <score>"``, for detections scoring >= score_threshold."""
    scale = display_scale(image.shape[1], image.shape[2], min_side)
    out = image.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2) if scale > 1 else image
    height, width = out.shape[1:]
    keep = instances["scores"] >= score_threshold
    if not keep.any():
        return out
    classes = instances["classes"][keep].tolist()
    scores = instances["scores"][keep].tolist()
    colors = [PALETTE[c % len(PALETTE)] for c in classes]
    thickness = line_width(height, width)
    if "masks" in instances:
        masks = instances["masks"][keep].cpu().bool()
        if scale > 1:
            masks = masks.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
        out = draw_segmentation_masks(out, masks, alpha=mask_alpha, colors=colors)
        out = draw_segmentation_masks(out, mask_outlines(masks, max(1, thickness // 2)), alpha=1.0, colors=colors)
    boxes = instances["boxes"][keep].cpu().float() * scale
    out = draw_bounding_boxes(out, boxes, colors=colors, width=thickness)
    names = [class_names[c] if class_names is not None and c < len(class_names) else f"class {c}" for c in classes]
    return _draw_labels(out, boxes, [f"{n} {s:.2f}" for n, s in zip(names, scores)], colors, font_size(height, width))
