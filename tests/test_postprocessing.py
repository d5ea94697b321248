"""Batched mask pasting and post-processing against the per-detection code they replaced (kept here as the
reference): bit-identical masks on the CPU for every kind of box, in one chunk or many."""
import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import clip_boxes_to_image

from ifr.modeling.postprocessing import TILE, detector_postprocess, paste_masks_in_image


def reference_paste_mask(mask, box, image_size, threshold=0.5):
    """The per-detection paste (one ``box.tolist()`` and one grid_sample per detection) as it was, with
    ``threshold=None`` giving the samples instead of the mask."""
    height, width = image_size
    out = torch.zeros((height, width), dtype=torch.bool if threshold is not None else torch.float32,
                      device=mask.device)
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
    out[top:bottom, left:right] = sampled[0, 0] >= threshold if threshold is not None else sampled[0, 0]
    return out


def reference_postprocess(detections, input_size, output_size, mask_threshold=0.5):
    scale_y, scale_x = output_size[0] / input_size[0], output_size[1] / input_size[1]
    boxes = detections["boxes"] * torch.tensor([scale_x, scale_y, scale_x, scale_y])
    boxes = clip_boxes_to_image(boxes, output_size)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    result = {k: v[keep] for k, v in detections.items()}
    result["boxes"] = boxes[keep]
    masks = [reference_paste_mask(m[0], b, output_size, mask_threshold)
             for m, b in zip(result["masks"], result["boxes"])]
    result["masks"] = torch.stack(masks) if masks else torch.zeros((0, *output_size), dtype=torch.bool)
    return result


def random_boxes(n, height, width, generator, dtype=torch.float32):
    """Boxes of every kind: inside, partly and wholly outside the image, sub-pixel, integer-aligned,
    empty and inverted, larger than the image."""
    def uniform(low, high):
        return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)

    x0, y0 = uniform(-0.3 * width, 1.1 * width), uniform(-0.3 * height, 1.1 * height)
    kind = torch.randint(0, 5, (n,), generator=generator)
    w = torch.where(kind == 0, uniform(0, 1.2), torch.where(kind == 1, uniform(1, 0.5 * width),
                    torch.where(kind == 2, uniform(width, 2 * width), uniform(-3, 40))))
    h = torch.where(kind == 0, uniform(0, 1.2), torch.where(kind == 1, uniform(1, 0.5 * height),
                    torch.where(kind == 2, uniform(height, 2 * height), uniform(-3, 40))))
    aligned = kind == 4
    x0, y0 = torch.where(aligned, x0.round(), x0), torch.where(aligned, y0.round(), y0)
    w, h = torch.where(aligned, w.round(), w), torch.where(aligned, h.round(), h)
    return torch.stack([x0, y0, x0 + w, y0 + h], dim=1).to(dtype)


def random_masks(n, size, generator, dtype=torch.float32):
    """Probabilities, a third of them on a coarse grid of values (0.5 exactly among them), so that
    samples land on the threshold."""
    masks = torch.rand(n, size, size, generator=generator, dtype=torch.float64)
    coarse = torch.arange(n) % 3 == 0
    masks[coarse] = (masks[coarse] * 4).round() / 4
    return masks.to(dtype)


def assert_pastes_equal(masks, boxes, image_size, threshold=0.5, **kwargs):
    expected = [reference_paste_mask(m, b, image_size, threshold) for m, b in zip(masks, boxes)]
    pasted = paste_masks_in_image(masks, boxes, image_size, threshold, **kwargs)
    assert pasted.dtype == expected[0].dtype and pasted.shape == (len(masks), *image_size)
    for k, mask in enumerate(expected):
        assert torch.equal(pasted[k], mask), f"detection {k}, box {boxes[k].tolist()}"
    return pasted


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("threshold", [0.5, 0.3, None])
def test_batched_paste_is_the_per_detection_paste(seed, threshold):
    generator = torch.Generator().manual_seed(seed)
    height, width = 57 + seed * 13, 90 - seed * 9
    boxes = random_boxes(60, height, width, generator)
    pasted = assert_pastes_equal(random_masks(60, 28, generator), boxes, (height, width), threshold)
    assert (pasted != 0).any(dim=(1, 2)).sum() > 20  # most boxes are not empty: the comparison has content


@pytest.mark.parametrize("threshold", [0.5, None])
def test_batched_paste_of_float64_inputs(threshold):
    generator = torch.Generator().manual_seed(5)
    boxes = random_boxes(40, 48, 64, generator, torch.float64)
    assert_pastes_equal(random_masks(40, 14, generator, torch.float64), boxes, (48, 64), threshold)


def test_chunking_does_not_change_masks():
    """Many detections, one tile a grid_sample call: the same masks as one call and as the reference."""
    generator = torch.Generator().manual_seed(6)
    boxes, masks = random_boxes(300, 40, 50, generator), random_masks(300, 28, generator)
    whole = paste_masks_in_image(masks, boxes, (40, 50), threshold=None)
    chunked = assert_pastes_equal(masks, boxes, (40, 50), threshold=None, max_chunk_pixels=300)
    assert torch.equal(whole, chunked)
    assert_pastes_equal(masks, boxes, (40, 50), max_chunk_pixels=300)


def test_calls_hold_their_pixel_budget(monkeypatch):
    """Every grid_sample call samples whole tiles, at most the budget's worth."""
    calls = []
    real_grid_sample = F.grid_sample

    def counting_grid_sample(input, grid, **kwargs):
        calls.append(grid.shape[:3].numel())
        return real_grid_sample(input, grid, **kwargs)

    generator = torch.Generator().manual_seed(7)
    boxes, masks = random_boxes(30, 100, 120, generator), random_masks(30, 28, generator)
    whole = paste_masks_in_image(masks, boxes, (100, 120))
    monkeypatch.setattr(F, "grid_sample", counting_grid_sample)
    assert torch.equal(paste_masks_in_image(masks, boxes, (100, 120), max_chunk_pixels=3 * TILE * TILE + 5), whole)
    assert len(calls) > 3 and all(c <= 3 * TILE * TILE for c in calls)


@pytest.mark.parametrize("image_size", [(7, 300), (300, 5), (1, 1), (TILE, TILE + 1)])
def test_images_smaller_than_a_tile(image_size):
    generator = torch.Generator().manual_seed(8)
    boxes = random_boxes(20, *image_size, generator)
    assert_pastes_equal(random_masks(20, 28, generator), boxes, image_size, threshold=None)


def test_empty_and_non_finite_boxes_paste_empty_masks():
    boxes = torch.tensor([[5.0, 5.0, 5.0, 9.0], [5.0, 9.0, 8.0, 2.0], [-9.0, 1.0, -1.0, 5.0], [3.0, 40.0, 9.0, 45.0],
                          [2.2, 2.3, 2.8, 2.4],  # sub-pixel, holds no pixel centre
                          [float("nan"), 1.0, 5.0, 5.0], [1.0, 1.0, float("inf"), 5.0]])
    pasted = paste_masks_in_image(torch.ones(7, 28, 28), boxes, (30, 40))
    assert not pasted.any()
    assert_pastes_equal(torch.ones(5, 28, 28), boxes[:5], (30, 40))


def test_zero_detections():
    pasted = paste_masks_in_image(torch.zeros(0, 28, 28), torch.zeros(0, 4), (30, 40))
    assert pasted.shape == (0, 30, 40) and pasted.dtype == torch.bool


def test_paste_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(D, M, M\) masks and \(D, 4\) boxes"):
        paste_masks_in_image(torch.rand(3, 1, 28, 28), torch.zeros(3, 4), (30, 40))
    with pytest.raises(ValueError, match=r"\(D, M, M\) masks and \(D, 4\) boxes"):
        paste_masks_in_image(torch.rand(3, 28, 28), torch.zeros(2, 4), (30, 40))


@pytest.mark.parametrize("count", [0, 1, 80])
def test_postprocess_is_the_per_detection_postprocess(count):
    generator = torch.Generator().manual_seed(count)
    detections = {"boxes": random_boxes(count, 64, 96, generator), "scores": torch.rand(count, generator=generator),
                  "classes": torch.randint(0, 80, (count,), generator=generator),
                  "masks": random_masks(count, 28, generator)[:, None]}
    expected = reference_postprocess(detections, (64, 96), (200, 310))
    result = detector_postprocess(detections, (64, 96), (200, 310))
    assert result.keys() == expected.keys()
    for key, value in expected.items():
        assert result[key].dtype == value.dtype and torch.equal(result[key], value), key
