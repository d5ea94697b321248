"""A built-in SYNTHETIC instance-segmentation dataset: coloured shapes on textured backgrounds.

It exists so that training, evaluation and the tests run without any download. It is generated
deterministically (seeded numpy) on first use and written in COCO format (PNG images + an instances
JSON, polygons for squares/triangles and RLE for ellipses), so it goes through exactly the same
loader, mapper and COCO evaluator as COCO itself. It says nothing about accuracy on natural images.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_util

CLASSES = ("ellipse", "square", "triangle")
VERSION = 2  # bump when the generator changes, so stale copies are regenerated
SPLITS = {"train": (600, 1), "val": (100, 2)}  # split -> (number of images, seed)
IMAGE_SIZES = ((128, 128), (112, 160), (160, 112))  # (height, width)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth two-colour gradient with pixel noise, (H, W, 3) uint8."""
    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:height, 0:width]
    t = (np.cos(angle) * xx / width + np.sin(angle) * yy / height)
    t = (t - t.min()) / max(np.ptp(t), 1e-6)
    image = a * (1 - t[..., None]) + b * t[..., None] + rng.normal(0, 12, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def _shape_polygon(rng: np.random.Generator, kind: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if kind == "ellipse":
        rx, ry = r, r * rng.uniform(0.6, 1.0)
        rot = rng.uniform(0, math.pi)
        pts = [(rx * math.cos(t), ry * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 48, endpoint=False)]
    else:
        sides = 4 if kind == "square" else 3
        rot = rng.uniform(0, 2 * math.pi)
        pts = [(r * math.cos(2 * math.pi * k / sides), r * math.sin(2 * math.pi * k / sides)) for k in range(sides)]
    c, s = math.cos(rot), math.sin(rot)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]


def _rasterize(kind: str, polygon, height: int, width: int) -> np.ndarray:
    """The (H, W) uint8 mask the annotation will decode to: pycocotools' rasterisation of the stored
    polygon (squares, triangles), or the PIL-filled outline stored as RLE (ellipses)."""
    if kind == "ellipse":
        canvas = Image.new("L", (width, height), 0)
        ImageDraw.Draw(canvas).polygon(polygon, fill=1)
        return np.asarray(canvas, dtype=np.uint8)
    flat = [round(v, 2) for point in polygon for v in point]
    return mask_util.decode(mask_util.merge(mask_util.frPyObjects([flat], height, width)))


def _render_image(rng: np.random.Generator, height: int, width: int):
    """An image with 1-4 non-overlapping shapes: (image, [(class index, segmentation, mask), ...])."""
    image = _background(rng, height, width)
    objects, boxes = [], []
    for _ in range(int(rng.integers(1, 5))):
        for _attempt in range(20):
            kind = CLASSES[int(rng.integers(len(CLASSES)))]
            r = rng.uniform(8, 26)
            cx, cy = rng.uniform(r, width - r), rng.uniform(r, height - r)
            box = (cx - r - 2, cy - r - 2, cx + r + 2, cy + r + 2)
            if all(box[2] < o[0] or box[0] > o[2] or box[3] < o[1] or box[1] > o[3] for o in boxes):
                break
        else:
            continue
        boxes.append(box)
        polygon = _shape_polygon(rng, kind, cx, cy, r)
        mask = _rasterize(kind, polygon, height, width)
        if mask.sum() < 20:
            continue
        color = rng.uniform(0, 255, 3)
        image[mask.astype(bool)] = np.clip(color + rng.normal(0, 6, (int(mask.sum()), 3)), 0, 255).astype(np.uint8)
        segmentation = rle_segmentation(mask) if kind == "ellipse" else [[round(v, 2) for p in polygon for v in p]]
        objects.append((CLASSES.index(kind), segmentation, mask))
    return image, objects


def rle_segmentation(mask: np.ndarray) -> dict:
    """(H, W) uint8 mask -> COCO compressed RLE with a JSON-serialisable ``counts``."""
    rle = mask_util.encode(np.asfortranarray(mask))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


@dataclass(frozen=True)
class KeypointSchema:
    """The named keypoints of a keypoint dataset's (single) category, in COCO's conventions."""

    names: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...]  # indices into names that swap under a horizontal flip
    skeleton: tuple[tuple[int, int], ...]  # 1-based index pairs, as COCO's categories store them
    oks_sigmas: tuple[float, ...]  # per keypoint, the falloff of COCOeval's object keypoint similarity


@dataclass(frozen=True)
class SyntheticDataset:
    """A generated COCO-format dataset: ``render(rng, height, width)`` draws one image and returns
    ``(image (H, W, 3) uint8, [(class index, COCO segmentation, (H, W) uint8 mask), ...])``; with
    ``keypoints`` each object also carries its COCO keypoints ``[x1, y1, v1, ..., xK, yK, vK]``."""

    description: str
    classes: tuple[str, ...]
    splits: dict  # split -> (number of images, seed)
    image_sizes: tuple[tuple[int, int], ...]  # (height, width) choices
    render: Callable
    version: int  # bump when the generator changes, so stale copies are regenerated
    keypoints: KeypointSchema | None = None


SHAPES = SyntheticDataset("IFR synthetic shapes", CLASSES, SPLITS, IMAGE_SIZES, _render_image, VERSION)


def _annotation(class_index: int, segmentation, mask: np.ndarray, ann_id: int, image_id: int,
                keypoints: list[float] | None = None) -> dict:
    ys, xs = np.nonzero(mask)
    bbox = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
    annotation = {"id": ann_id, "image_id": image_id, "category_id": class_index + 1, "bbox": bbox,
                  "area": float(mask.sum()), "iscrowd": 0, "segmentation": segmentation}
    if keypoints is not None:
        annotation.update(keypoints=keypoints, num_keypoints=sum(1 for v in keypoints[2::3] if v > 0))
    return annotation


def generate_split(root: str, split: str, dataset: SyntheticDataset = SHAPES) -> None:
    """Writes ``root/<split>/*.png`` and ``root/annotations/instances_<split>.json``."""
    num_images, seed = dataset.splits[split]
    rng = np.random.default_rng(seed)
    image_dir = os.path.join(root, split)
    os.makedirs(image_dir, exist_ok=True)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        height, width = dataset.image_sizes[int(rng.integers(len(dataset.image_sizes)))]
        image, objects = dataset.render(rng, height, width)
        file_name = f"{image_id:06d}.png"
        Image.fromarray(image).save(os.path.join(image_dir, file_name))
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for class_index, segmentation, mask, *keypoints in objects:
            annotations.append(_annotation(class_index, segmentation, mask, len(annotations) + 1, image_id,
                                           *keypoints))
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    categories = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(dataset.classes)]
    if dataset.keypoints is not None:
        for category in categories:
            category.update(keypoints=list(dataset.keypoints.names),
                            skeleton=[list(pair) for pair in dataset.keypoints.skeleton])
    with open(os.path.join(root, "annotations", f"instances_{split}.json"), "w") as f:
        json.dump({"images": images, "annotations": annotations, "info": {"description": dataset.description},
                   "categories": categories}, f)


def ensure_synthetic_dataset(root: str, dataset: SyntheticDataset = SHAPES) -> str:
    """Generates the dataset under ``root`` unless it is already complete; returns ``root``.

    Generation happens in a temporary sibling folder renamed into place, so concurrent processes
    never see a half-written dataset.
    """
    marker = os.path.join(root, f"COMPLETE_v{dataset.version}")
    if os.path.exists(marker):
        return root
    parent = os.path.dirname(os.path.abspath(root))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".synthetic-", dir=parent)
    try:
        for split in dataset.splits:
            generate_split(staging, split, dataset)
        open(os.path.join(staging, f"COMPLETE_v{dataset.version}"), "w").close()
        if os.path.exists(root):
            shutil.rmtree(root)
        try:
            os.rename(staging, root)
        except OSError:  # another process finished first
            if not os.path.exists(marker):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root
