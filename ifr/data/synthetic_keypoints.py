"""A built-in SYNTHETIC keypoint dataset: houses with six named keypoints (``synthetic_keypoints_train``
/ ``_val``), in COCO's keypoint format.

One category, "house": a rectangular body under a triangular roof of another colour, of random size,
aspect, roof height and apex offset, rotated by at most 25 degrees (so that left and right stay
meaningful, as for people). Its keypoints: the roof's apex, the body's four corners and the body's
centre. A horizontal flip turns a house into a house whose left corners are the right ones: the flip
pairs are (top_left, top_right) and (bottom_left, bottom_right). One to four houses per image may
overlap; the later ones occlude the earlier, whose masks then exclude their occluders. A keypoint
inside a later house's outline is labelled but not visible (v = 1), every other one is visible
(v = 2); every keypoint lies inside its image (no v = 0). A house left with less than 30% of itself
visible is dropped (it still occludes). Boxes and masks are those of the visible part, as COCO's.

The OKS sigmas are set for this set, not measured (COCO measured its per-keypoint sigmas from
annotators' spread): 0.05 for the five corners, image landmarks a detector can locate to a few pixels,
0.08 for the centre, which no edge or corner marks. Generated deterministically like the shapes
dataset (``ifr.data.synthetic``).
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from .synthetic import KeypointSchema, SyntheticDataset, _background, rle_segmentation

CLASSES = ("house",)
SPLITS = {"train": (600, 21), "val": (100, 22)}
IMAGE_SIZES = ((128, 128), (112, 160), (160, 112))
MIN_VISIBLE = 0.3
KEYPOINTS = KeypointSchema(
    names=("roof", "top_left", "top_right", "bottom_left", "bottom_right", "centre"),
    flip_pairs=((1, 2), (3, 4)),
    skeleton=((1, 2), (1, 3), (2, 3), (2, 4), (3, 5), (4, 5)),
    oks_sigmas=(0.05, 0.05, 0.05, 0.05, 0.05, 0.08),
)
MAX_ROTATION = math.radians(25)


def _house_points(rng: np.random.Generator, cx: float, cy: float, size: float) -> np.ndarray:
    """(6, 2) image coordinates of a random house's keypoints, in ``KEYPOINTS.names`` order."""
    half_w = size / 2
    half_h = half_w * rng.uniform(0.6, 1.0)
    roof = half_w * rng.uniform(0.5, 1.0)
    apex_x = half_w * rng.uniform(-0.3, 0.3)
    local = np.array([(apex_x, -half_h - roof), (-half_w, -half_h), (half_w, -half_h), (-half_w, half_h),
                      (half_w, half_h), (0.0, 0.0)])  # x right, y down
    angle = rng.uniform(-MAX_ROTATION, MAX_ROTATION)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return local @ rotation.T + (cx, cy)


def _fill(height: int, width: int, polygon: np.ndarray) -> np.ndarray:
    canvas = Image.new("L", (width, height), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in polygon.tolist()], fill=1)
    return np.asarray(canvas, dtype=np.uint8).copy()


def _render_image(rng: np.random.Generator, height: int, width: int):
    """An image with 1-4 possibly overlapping houses: (image, [(0, RLE, visible mask, keypoints), ...])."""
    image = _background(rng, height, width)
    placed = []  # (full mask, (6, 2) keypoints) in drawing order
    for _ in range(int(rng.integers(1, 5))):
        size = rng.uniform(18, 0.4 * min(height, width))
        reach = 1.05 * size  # bounds every keypoint's distance from the centre (the apex's is at most 1.01 size)
        cx, cy = rng.uniform(reach, width - reach), rng.uniform(reach, height - reach)
        points = _house_points(rng, cx, cy, size)
        body = _fill(height, width, points[[1, 2, 4, 3]])
        roof = _fill(height, width, points[[1, 0, 2]])
        for part, colour in ((body, rng.uniform(0, 255, 3)), (roof, rng.uniform(0, 255, 3))):
            count = int(part.sum())
            image[part.astype(bool)] = np.clip(colour + rng.normal(0, 6, (count, 3)), 0, 255).astype(np.uint8)
        placed.append((body | roof, points))
    objects, covered = [], np.zeros((height, width), dtype=np.uint8)
    for mask, points in reversed(placed):  # the last drawn is fully visible; earlier ones lose what covers them
        visible = mask & (1 - covered)
        pixels = np.clip(np.floor(points).astype(int), 0, [width - 1, height - 1])
        hidden = covered[pixels[:, 1], pixels[:, 0]].astype(bool)
        covered |= mask
        if visible.sum() >= 20 and visible.sum() >= MIN_VISIBLE * mask.sum():
            keypoints = [value for (x, y), h in zip(points.tolist(), hidden)
                         for value in (round(x, 2), round(y, 2), 1 if h else 2)]
            objects.append((0, rle_segmentation(visible), visible, keypoints))
    return image, objects[::-1]


KEYPOINT_HOUSES = SyntheticDataset("IFR synthetic keypoints (houses)", CLASSES, SPLITS, IMAGE_SIZES, _render_image,
                                   version=1, keypoints=KEYPOINTS)
