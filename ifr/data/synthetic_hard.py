"""A second built-in dataset where the mask head matters: non-convex and thin shapes, holes,
occlusion, textured backgrounds and a wide size range (``synthetic_hard_train`` / ``_val``).

Shapes: stars (5-7 spikes), crescents (a disk minus an offset disk), rings (with their hole), strokes
(thick letter-like polylines) and spirals (thin). Up to six objects per image may overlap; the later
ones occlude the earlier, whose masks then exclude their occluders (an object left with less than
30% of itself visible is dropped). Every mask is stored as RLE. Generated deterministically like the
shapes dataset (``ifr.data.synthetic``).
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from .synthetic import SyntheticDataset, rle_segmentation

CLASSES = ("star", "crescent", "ring", "stroke", "spiral")
SPLITS = {"train": (600, 11), "val": (100, 12)}
IMAGE_SIZES = ((128, 128), (128, 176), (176, 128), (160, 160))
MIN_VISIBLE = 0.3


def _textured_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Two random gratings of random colours plus pixel noise, (H, W, 3) uint8."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    image = np.full((height, width, 3), rng.uniform(40, 215, 3))
    for _ in range(2):
        angle, period = rng.uniform(0, math.pi), rng.uniform(6, 30)
        wave = np.sin(2 * math.pi * (np.cos(angle) * xx + np.sin(angle) * yy) / period)
        image += wave[..., None] * rng.uniform(-45, 45, 3)
    image += rng.normal(0, 14, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def _draw(height: int, width: int, paint) -> np.ndarray:
    canvas = Image.new("L", (width, height), 0)
    paint(ImageDraw.Draw(canvas))
    return np.asarray(canvas, dtype=np.uint8).copy()


def _shape_mask(rng: np.random.Generator, kind: str, cx: float, cy: float, r: float, height: int,
                width: int) -> np.ndarray:
    rot = rng.uniform(0, 2 * math.pi)
    if kind == "star":
        spikes = int(rng.integers(5, 8))
        points = [(cx + (r if k % 2 == 0 else 0.42 * r) * math.cos(rot + math.pi * k / spikes),
                   cy + (r if k % 2 == 0 else 0.42 * r) * math.sin(rot + math.pi * k / spikes))
                  for k in range(2 * spikes)]
        return _draw(height, width, lambda d: d.polygon(points, fill=1))
    if kind == "crescent":
        disk = _draw(height, width, lambda d: d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=1))
        ox, oy = cx + 0.55 * r * math.cos(rot), cy + 0.55 * r * math.sin(rot)
        bite = _draw(height, width, lambda d: d.ellipse((ox - 0.85 * r, oy - 0.85 * r, ox + 0.85 * r, oy + 0.85 * r),
                                                        fill=1))
        return disk & (1 - bite)
    if kind == "ring":
        inner = r * rng.uniform(0.45, 0.65)
        disk = _draw(height, width, lambda d: d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=1))
        hole = _draw(height, width, lambda d: d.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=1))
        return disk & (1 - hole)
    if kind == "stroke":  # a letter-like polyline: L, V, Z or N shaped, thick
        corners = [(-1, -1), (-1, 1), (1, 1), (1, -1)]
        start = int(rng.integers(4))
        path = [corners[(start + k) % 4] for k in range(int(rng.integers(3, 5)))]
        c, s = math.cos(rot), math.sin(rot)
        points = [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in path]
        thickness = max(3, int(r * rng.uniform(0.18, 0.3)))
        return _draw(height, width, lambda d: d.line(points, fill=1, width=thickness, joint="curve"))
    turns = rng.uniform(1.5, 2.5)  # spiral: r grows linearly with the angle
    angles = np.linspace(0, 2 * math.pi * turns, 120)
    points = [(cx + r * t / angles[-1] * math.cos(rot + t), cy + r * t / angles[-1] * math.sin(rot + t))
              for t in angles]
    return _draw(height, width, lambda d: d.line(points, fill=1, width=max(2, int(r * 0.12))))


def _render_image(rng: np.random.Generator, height: int, width: int):
    """An image with 2-6 possibly overlapping shapes: (image, [(class index, RLE, visible mask), ...])."""
    image = _textured_background(rng, height, width)
    placed = []  # (class index, full mask) in drawing order
    for _ in range(int(rng.integers(2, 7))):
        kind = int(rng.integers(len(CLASSES)))
        r = float(rng.uniform(7, 0.3 * min(height, width)))
        cx, cy = rng.uniform(r, width - r), rng.uniform(r, height - r)
        mask = _shape_mask(rng, CLASSES[kind], cx, cy, r, height, width)
        if mask.sum() < 20:
            continue
        colour = rng.uniform(0, 255, 3)
        shade = rng.normal(0, 10, (int(mask.sum()), 3)) + np.linspace(-25, 25, int(mask.sum()))[:, None]
        image[mask.astype(bool)] = np.clip(colour + shade, 0, 255).astype(np.uint8)
        placed.append((kind, mask))
    objects, covered = [], np.zeros((height, width), dtype=np.uint8)
    for kind, mask in reversed(placed):  # the last drawn is fully visible; earlier ones lose what covers them
        visible = mask & (1 - covered)
        covered |= mask
        if visible.sum() >= 20 and visible.sum() >= MIN_VISIBLE * mask.sum():
            objects.append((kind, rle_segmentation(visible), visible))
    return image, objects[::-1]


HARD = SyntheticDataset("IFR synthetic hard shapes", CLASSES, SPLITS, IMAGE_SIZES, _render_image, version=1)
