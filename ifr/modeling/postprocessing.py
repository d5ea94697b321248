"""Detections at network-input resolution -> detections at the original image's resolution."""
from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torchvision.ops import clip_boxes_to_image

# Pixels sampled by one grid_sample call when pasting masks (about 14 bytes each: the grid, the
# samples, the thresholded values): 2**23 pixels keep a chunk near 120 MB on any device.
MAX_CHUNK_PIXELS = 2 ** 23


def _mask_windows(boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """(D, 4) boxes (x0, y0, x1, y1) -> (D, 4) int64 pixel ranges (left, top, right, bottom), the
    floor / ceil of each box clipped to the image: the pixels whose centre can lie in the box. An
    empty or non-finite box, or one outside the image, gets the empty range (0, 0, 0, 0)."""
    height, width = image_size
    limits = boxes.new_tensor([width, height, width, height])
    corners = torch.cat([boxes[:, :2].floor(), boxes[:, 2:].ceil()], dim=1)
    corners = torch.minimum(corners.clamp(min=0), limits)
    valid = (torch.isfinite(boxes).all(dim=1) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
             & (corners[:, 2] > corners[:, 0]) & (corners[:, 3] > corners[:, 1]))
    return torch.where(valid[:, None], corners, 0).to(torch.int64)


def _chunks(windows: list[list[int]], max_pixels: int) -> Iterator[tuple[list[int], int, int]]:
    """Groups the non-empty windows, largest first, as (indices, height, width): every window of a
    group padded to the group's largest height and width, the group holds at most ``max_pixels``
    pixels (or is a single window)."""
    sizes = [(bottom - top, right - left) for left, top, right, bottom in windows]
    order = sorted((i for i, (h, w) in enumerate(sizes) if h > 0), key=lambda i: sizes[i][0] * sizes[i][1],
                   reverse=True)
    group: list[int] = []
    group_h = group_w = 0
    for i in order:
        h, w = max(group_h, sizes[i][0]), max(group_w, sizes[i][1])
        if group and (len(group) + 1) * h * w > max_pixels:
            yield group, group_h, group_w
            group, (h, w) = [], sizes[i]
        group.append(i)
        group_h, group_w = h, w
    if group:
        yield group, group_h, group_w


def paste_masks_in_image(masks: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int],
                         threshold: float | None = 0.5, max_chunk_pixels: int = MAX_CHUNK_PIXELS) -> torch.Tensor:
    """(D, M, M) probabilities inside (D, 4) boxes (x0, y0, x1, y1) -> (D, H, W) bool masks, or with
    ``threshold=None`` the (D, H, W) float32 samples the masks are thresholded from.

    Each pixel centre (x + 0.5, y + 0.5) samples its detection's mask bilinearly at its position
    relative to the box (``grid_sample``, align_corners=False, zero outside) and is set where the
    sample is >= ``threshold``, as cvpods pastes masks. Pixels whose centre lies outside the box can
    only sample less than half of an edge value, so only each box's pixel window (``_mask_windows``)
    is sampled, the rest is left False (0). Detections are pasted in chunks of similar window sizes, each chunk one
    ``grid_sample`` call over at most ``max_chunk_pixels`` pixels; the windows are read on the host
    once (one device-to-host copy whatever D is). Box coordinates enter the arithmetic as float32,
    box sizes as the float32 rounding of a float64 difference: a mask is bit-identical to one pasted
    on its own.
    """
    if masks.dim() != 3 or boxes.shape != (len(masks), 4):
        raise ValueError(f"paste_masks_in_image: expected (D, M, M) masks and (D, 4) boxes, got "
                         f"{tuple(masks.shape)} and {tuple(boxes.shape)}")
    height, width = image_size
    device = masks.device
    out = torch.zeros((len(masks), height, width), dtype=torch.bool if threshold is not None else torch.float32,
                      device=device)
    if len(masks) == 0:
        return out
    windows = _mask_windows(boxes, image_size)
    origins = boxes[:, :2].float()
    sizes = (boxes[:, 2:].double() - boxes[:, :2].double()).float()
    for group, h, w in _chunks(windows.tolist(), max_chunk_pixels):
        index = torch.tensor(group, device=device)
        window = windows[index]
        # Padded windows start early enough to stay inside the image, so their pixels are distinct.
        top = torch.clamp(window[:, 1], max=height - h)
        left = torch.clamp(window[:, 0], max=width - w)
        ys = top[:, None] + torch.arange(h, device=device)  # (n, h)
        xs = left[:, None] + torch.arange(w, device=device)  # (n, w)
        grid_y = (ys.float() + 0.5 - origins[index, 1:2]) / sizes[index, 1:2] * 2 - 1
        grid_x = (xs.float() + 0.5 - origins[index, 0:1]) / sizes[index, 0:1] * 2 - 1
        grid = torch.stack([grid_x[:, None, :].expand(-1, h, -1), grid_y[:, :, None].expand(-1, -1, w)], dim=-1)
        sampled = F.grid_sample(masks[index, None].float(), grid, mode="bilinear", align_corners=False)[:, 0]
        in_window = (((ys >= window[:, 1:2]) & (ys < window[:, 3:4]))[:, :, None]
                     & ((xs >= window[:, 0:1]) & (xs < window[:, 2:3]))[:, None, :])
        pasted = sampled >= threshold if threshold is not None else sampled
        out[index[:, None, None], ys[:, :, None], xs[:, None, :]] = pasted.masked_fill(~in_window, 0)
    return out


def detector_postprocess(detections: dict, input_size: tuple[int, int], output_size: tuple[int, int],
                         mask_threshold: float = 0.5) -> dict:
    """Rescales one image's detections from the network input size (h, w) to ``output_size`` (H, W):
    boxes scaled and clipped, empty boxes removed, (D, 1, M, M) mask probabilities pasted into
    (D, H, W) bool masks."""
    scale_y, scale_x = output_size[0] / input_size[0], output_size[1] / input_size[1]
    boxes = detections["boxes"] * torch.tensor([scale_x, scale_y, scale_x, scale_y], device=detections["boxes"].device)
    boxes = clip_boxes_to_image(boxes, output_size)
    keep = torch.nonzero((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).squeeze(1)
    result = {k: v[keep] for k, v in detections.items()}
    result["boxes"] = boxes[keep]
    if "masks" in result:
        result["masks"] = paste_masks_in_image(result["masks"][:, 0], result["boxes"], output_size, mask_threshold)
    return result
