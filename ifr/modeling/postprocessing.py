"""Detections at network-input resolution -> detections at the original image's resolution."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.ops import clip_boxes_to_image


def paste_mask_in_image(mask: torch.Tensor, box: torch.Tensor, image_size: tuple[int, int],
                        threshold: float = 0.5) -> torch.Tensor:
    """(M, M) probabilities inside ``box`` (x0, y0, x1, y1) -> (H, W) bool mask.

    Each pixel centre (x + 0.5, y + 0.5) samples the mask bilinearly at its position relative to the
    box (``grid_sample``, align_corners=False, zero outside), as cvpods pastes masks. Pixels whose
    centre lies outside the box can only sample less than half of an edge value, so only the box's
    pixel range is computed.
    """
    height, width = image_size
    out = torch.zeros((height, width), dtype=torch.bool, device=mask.device)
    x0, y0, x1, y1 = box.tolist()
    if not (x1 > x0 and y1 > y0):
        return out
    left, top = max(int(math.floor(x0)), 0), max(int(math.floor(y0)), 0)
    right, bottom = min(int(math.ceil(x1)), width), min(int(math.ceil(y1)), height)
    if right <= left or bottom <= top:
        return out
    xs = (torch.arange(left, right, device=mask.device, dtype=torch.float32) + 0.5 - x0) / (x1 - x0) * 2 - 1
    ys = (torch.arange(top, bottom, device=mask.device, dtype=torch.float32) + 0.5 - y0) / (y1 - y0) * 2 - 1
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], dim=-1)[None]
    sampled = F.grid_sample(mask[None, None].float(), grid, mode="bilinear", align_corners=False)
    out[top:bottom, left:right] = sampled[0, 0] >= threshold
    return out


def detector_postprocess(detections: dict, input_size: tuple[int, int], output_size: tuple[int, int],
                         mask_threshold: float = 0.5) -> dict:
    """Rescales one image's detections from the network input size (h, w) to ``output_size`` (H, W):
    boxes scaled and clipped, empty boxes removed, (D, 1, M, M) mask probabilities pasted into
    (D, H, W) bool masks."""
    scale_y, scale_x = output_size[0] / input_size[0], output_size[1] / input_size[1]
    boxes = detections["boxes"] * torch.tensor([scale_x, scale_y, scale_x, scale_y], device=detections["boxes"].device)
    boxes = clip_boxes_to_image(boxes, output_size)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    result = {k: v[keep] for k, v in detections.items()}
    result["boxes"] = boxes[keep]
    if "masks" in result:
        masks = [paste_mask_in_image(m[0], b, output_size, mask_threshold) for m, b in zip(result["masks"], result["boxes"])]
        result["masks"] = torch.stack(masks) if masks else torch.zeros((0, *output_size), dtype=torch.bool,
                                                                       device=boxes.device)
    return result
