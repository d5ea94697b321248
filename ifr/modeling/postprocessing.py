"""Detections at network-input resolution -> detections at the original image's resolution."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import clip_boxes_to_image

# Masks are pasted by sampling each box's pixel window in square tiles of TILE pixels a side, the tiles
# of all detections batched into grid_sample calls of at most MAX_CHUNK_PIXELS pixels each (about
# 14 bytes a pixel: grid, samples, thresholded values; 2**23 pixels stay near 120 MB on any device).
TILE = 32
MAX_CHUNK_PIXELS = 2 ** 23


def _mask_windows(boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """(D, 4) boxes (x0, y0, x1, y1) -> (D, 4) int64 pixel ranges (left, top, right, bottom), the
    floor / ceil of each box clipped to the image: the pixels whose centre can lie in the box. An
    empty or non-finite box, or one outside the image, gets the empty range (0, 0, 0, 0)."""
    height, width = image_size
    corners = torch.cat([boxes[:, :2].double().floor(), boxes[:, 2:].double().ceil()], dim=1)
    corners[:, 0::2] = corners[:, 0::2].clamp(0, width)
    corners[:, 1::2] = corners[:, 1::2].clamp(0, height)
    valid = (torch.isfinite(boxes).all(dim=1) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
             & (corners[:, 2] > corners[:, 0]) & (corners[:, 3] > corners[:, 1]))
    return torch.where(valid[:, None], corners, 0).to(torch.int64)


def _tiles(windows: torch.Tensor, tile_h: int, tile_w: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cuts (D, 4) windows into tiles of tile_h x tile_w pixels -> the (T,) detection index and the
    (T,) top row and (T,) left column of each tile. A window's last row (column) of tiles is moved
    back to end with the window, or to start at 0, so that every tile lies in the image (tiles of
    one window may overlap). One host sync whatever D is: reading the number of tiles."""
    left, top, right, bottom = windows.unbind(dim=1)
    rows = (bottom - top + tile_h - 1) // tile_h
    columns = (right - left + tile_w - 1) // tile_w
    per_window = rows * columns
    count = int(per_window.sum())
    detection = torch.repeat_interleave(torch.arange(len(windows), device=windows.device), per_window,
                                        output_size=count)
    k = torch.arange(count, device=windows.device) - (torch.cumsum(per_window, 0) - per_window)[detection]
    row, column = k // columns[detection], k % columns[detection]
    tile_top = torch.minimum(top[detection] + row * tile_h, bottom[detection] - tile_h).clamp(min=0)
    tile_left = torch.minimum(left[detection] + column * tile_w, right[detection] - tile_w).clamp(min=0)
    return detection, tile_top, tile_left


def paste_masks_in_image(masks: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int],
                         threshold: float | None = 0.5, max_chunk_pixels: int = MAX_CHUNK_PIXELS) -> torch.Tensor:
    """(D, M, M) probabilities inside (D, 4) boxes (x0, y0, x1, y1) -> (D, H, W) bool masks, or with
    ``threshold=None`` the (D, H, W) float32 samples the masks are thresholded from.

    Each pixel centre (x + 0.5, y + 0.5) samples its detection's mask bilinearly at its position
    relative to the box (``grid_sample``, align_corners=False, zero outside) and is set where the
    sample is >= ``threshold``, as cvpods pastes masks. Pixels whose centre lies outside the box can
    only sample less than half of an edge value, so only each box's pixel window (``_mask_windows``)
    is sampled, the rest is left False (0). The windows are sampled in tiles, all detections' tiles
    batched into ``grid_sample`` calls of at most ``max_chunk_pixels`` pixels: one host sync per
    call of this function, none per detection. Box coordinates enter the arithmetic as float32, box
    sizes as the float32 rounding of a float64 difference: a mask is bit-identical to one pasted on
    its own.
    """
    if masks.dim() != 3 or boxes.shape != (len(masks), 4):
        raise ValueError(f"paste_masks_in_image: expected (D, M, M) masks and (D, 4) boxes, got "
                         f"{tuple(masks.shape)} and {tuple(boxes.shape)}")
    height, width = image_size
    device = masks.device
    out = torch.zeros((len(masks), height, width), dtype=torch.bool if threshold is not None else torch.float32,
                      device=device)
    if len(masks) == 0 or height == 0 or width == 0:
        return out
    windows = _mask_windows(boxes, image_size)
    tile_h, tile_w = min(TILE, height), min(TILE, width)
    detection, tile_top, tile_left = _tiles(windows, tile_h, tile_w)
    origins = boxes[:, :2].float()
    sizes = (boxes[:, 2:].double() - boxes[:, :2].double()).float()
    tiles_per_call = max(1, max_chunk_pixels // (tile_h * tile_w))
    for first in range(0, len(detection), tiles_per_call):
        index = detection[first:first + tiles_per_call]
        window = windows[index]
        ys = tile_top[first:first + tiles_per_call, None] + torch.arange(tile_h, device=device)  # (n, tile_h)
        xs = tile_left[first:first + tiles_per_call, None] + torch.arange(tile_w, device=device)  # (n, tile_w)
        grid_y = (ys.float() + 0.5 - origins[index, 1:2]) / sizes[index, 1:2] * 2 - 1
        grid_x = (xs.float() + 0.5 - origins[index, 0:1]) / sizes[index, 0:1] * 2 - 1
        grid = torch.stack([grid_x[:, None, :].expand(-1, tile_h, -1), grid_y[:, :, None].expand(-1, -1, tile_w)],
                           dim=-1)
        sampled = F.grid_sample(masks[index, None].float(), grid, mode="bilinear", align_corners=False)[:, 0]
        in_window = (((ys >= window[:, 1:2]) & (ys < window[:, 3:4]))[:, :, None]
                     & ((xs >= window[:, 0:1]) & (xs < window[:, 2:3]))[:, None, :])
        pasted = sampled >= threshold if threshold is not None else sampled
        # overlapping tiles of a window write the same value to the pixels they share
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
