"""A COCO-train-sized instances json of random polygons, for the loading and memory benchmarks.

COCO train2017 has 118,287 images, 860,001 annotations (about 1% of them crowd regions stored as
uncompressed RLE) and 80 categories; a polygon has 10 to 40 (x, y) points with 2 decimals. The file
written here has those counts and shapes (the image files themselves are not written: the loaders
read only the json). The contents are random but seeded, so two runs write the same file.

Run (in the virtual environment): ``python benchmarks/synthetic_coco.py OUT.json [--images 118287]``;
the benchmarks import ``write_synthetic_coco``.
"""
from __future__ import annotations

import argparse
import json

import numpy as np

COCO_TRAIN_IMAGES = 118_287
COCO_TRAIN_ANNOTATIONS = 860_001
COCO_CATEGORIES = 80
CROWD_FRACTION = 0.01


def _polygon(rng: np.random.Generator, width: int, height: int) -> list[float]:
    """A star-shaped polygon of 10-40 points around a random centre, clipped to the image."""
    points = int(rng.integers(10, 41))
    angles = np.sort(rng.uniform(0, 2 * np.pi, points))
    radius = rng.uniform(5, min(width, height) / 3) * rng.uniform(0.5, 1.0, points)
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    xs = np.clip(cx + radius * np.cos(angles), 0, width)
    ys = np.clip(cy + radius * np.sin(angles), 0, height)
    xy = np.stack([xs, ys], 1)
    return np.round(xy, 2).ravel().tolist()


def _crowd_rle(rng: np.random.Generator, width: int, height: int) -> dict:
    """An uncompressed RLE (COCO's crowd format) of a few hundred runs covering the image."""
    cuts = np.unique(rng.integers(1, height * width, 300))
    counts = np.diff(np.concatenate([[0], cuts, [height * width]])).tolist()
    return {"size": [height, width], "counts": counts}


def write_synthetic_coco(path: str, num_images: int = COCO_TRAIN_IMAGES,
                         num_annotations: int | None = None, seed: int = 0) -> dict:
    """Writes the json to ``path`` annotation by annotation (the whole file is never held in memory);
    returns ``{"images", "annotations", "categories"}`` counts. ``num_annotations`` defaults to COCO's
    per-image rate."""
    rng = np.random.default_rng(seed)
    if num_annotations is None:
        num_annotations = round(num_images * COCO_TRAIN_ANNOTATIONS / COCO_TRAIN_IMAGES)
    widths = rng.choice([640, 480, 500, 427], num_images)
    heights = rng.choice([480, 640, 375, 427], num_images)
    owners = np.sort(rng.integers(0, num_images, num_annotations))
    categories = rng.integers(1, COCO_CATEGORIES + 1, num_annotations)
    crowd = rng.random(num_annotations) < CROWD_FRACTION
    with open(path, "w") as f:
        f.write('{"info": {"description": "synthetic COCO-train-sized file"}, "licenses": [], "images": [')
        f.write(", ".join(json.dumps({"id": i + 1, "file_name": f"{i + 1:012d}.jpg", "width": int(widths[i]),
                                      "height": int(heights[i])}) for i in range(num_images)))
        f.write('], "annotations": [')
        for k in range(num_annotations):
            image = int(owners[k])
            width, height = int(widths[image]), int(heights[image])
            if crowd[k]:
                segmentation, bbox = _crowd_rle(rng, width, height), [0.0, 0.0, float(width), float(height)]
                area = float(width * height) / 2
            else:
                polygon = _polygon(rng, width, height)
                xs, ys = polygon[0::2], polygon[1::2]
                bbox = [min(xs), min(ys), round(max(xs) - min(xs), 2), round(max(ys) - min(ys), 2)]
                segmentation, area = [polygon], round(bbox[2] * bbox[3] / 2, 2)
            f.write(("" if k == 0 else ", ") + json.dumps({
                "id": k + 1, "image_id": image + 1, "category_id": int(categories[k]), "iscrowd": int(crowd[k]),
                "area": area, "bbox": bbox, "segmentation": segmentation}))
        f.write('], "categories": [')
        f.write(", ".join(json.dumps({"id": c, "name": f"class{c}", "supercategory": "thing"})
                          for c in range(1, COCO_CATEGORIES + 1)))
        f.write("]}")
    return {"images": num_images, "annotations": num_annotations, "categories": COCO_CATEGORIES}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path")
    parser.add_argument("--images", type=int, default=COCO_TRAIN_IMAGES)
    args = parser.parse_args(argv)
    print(write_synthetic_coco(args.path, args.images))


if __name__ == "__main__":
    main()
