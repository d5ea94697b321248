"""COCO evaluation at val2017 size: the project's evaluator (faster-coco-eval) against pycocotools' COCOeval.

A synthetic ground truth shaped like COCO val2017 (5,000 images of COCO's usual sizes, Poisson(7.3)
objects per image, ~36.5k annotations in 80 categories with COCO's gapped ids 1-90, object sizes
log-normal around 45 px so that ~40% are small, ~40% medium, ~20% large, polygon outlines, 1% crowd
regions stored as uncompressed RLE as COCO's are) and 100 detections per image: jittered copies of
the objects (some with a wrong class) and random false positives, each with a box and an RLE mask.
Both implementations evaluate bbox and segm on the same inputs, in turns, in this one process; the
table gives each one's time (loading the results, evaluate, accumulate, summarize), the ratio and
the largest absolute difference over the 12 COCO summary figures and the (T, R, K, A, M) precision
array.

Run (in the virtual environment): ``python benchmarks/coco_eval_bench.py [--images 5000]
[--detections 100] [--seed 0] [--skip-pycocotools]``. The process needs ~0.9 GiB (torch, which the
evaluator's module imports) plus ~0.65 GiB per 1,000 images with pycocotools' run, ~4.2 GiB at the full
size: ``--images 1000`` on a small machine, or ``--skip-pycocotools`` to time the project's evaluator
alone at the full size.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import io
import platform
import resource
import time
from importlib.metadata import version

import numpy as np
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tabulate import tabulate

from ifr.evaluation.coco_evaluation import coco_task_metrics, task_results

IMAGE_SIZES = ((640, 480), (480, 640), (640, 427), (427, 640), (640, 426), (500, 375), (640, 512), (612, 612))
OBJECTS_PER_IMAGE = 7.3
CROWD_FRACTION = 0.01


def _outlines(rng: np.random.Generator, boxes: np.ndarray, vertices: int) -> np.ndarray:
    """(N, 2 * vertices) star-shaped polygons inscribed in the (N, 4) XYWH ``boxes``: points at
    increasing angles, radii 0.6-1.0 of the box's half sides, as flat [x0, y0, x1, y1, ...] rows."""
    angles = np.sort(rng.uniform(0, 2 * np.pi, (len(boxes), vertices)), axis=1)
    radii = rng.uniform(0.6, 1.0, (len(boxes), vertices))
    half = boxes[:, 2:] / 2
    centre = boxes[:, :2] + half
    x = centre[:, :1] + half[:, :1] * radii * np.cos(angles)
    y = centre[:, 1:] + half[:, 1:] * radii * np.sin(angles)
    return np.stack([x, y], 2).reshape(len(boxes), -1).round(2)


def _object_boxes(rng: np.random.Generator, count: int, width: int, height: int) -> np.ndarray:
    """(count, 4) XYWH boxes inside a width x height image: sides log-normal around 60 px (so that the
    objects' areas are ~40% small, ~35% medium, ~25% large, as COCO's), aspect ratios log-normal."""
    side = np.clip(np.exp(rng.normal(np.log(60.0), 1.0, count)), 4.0, 0.95 * min(width, height))
    aspect = np.exp(rng.normal(0.0, 0.5, count))
    w = np.minimum(side * np.sqrt(aspect), width - 1.0)
    h = np.minimum(side / np.sqrt(aspect), height - 1.0)
    return np.stack([rng.uniform(0, 1, count) * (width - w), rng.uniform(0, 1, count) * (height - h), w, h], 1)


def _uncompressed_rle(rle: dict) -> dict:
    """COCO's crowd format: run lengths (column-major, starting with a run of zeros) as a list."""
    flat = mask_util.decode(rle).ravel(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    counts = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    return {"counts": counts if flat[0] == 0 else [0, *counts], "size": list(rle["size"])}


def synthetic_val(num_images: int, rng: np.random.Generator) -> dict:
    """A COCO instances dict shaped like val2017 (see the module's docstring)."""
    category_ids = np.sort(rng.choice(np.arange(1, 91), 80, replace=False))
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        width, height = IMAGE_SIZES[rng.integers(len(IMAGE_SIZES))]
        images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": width, "height": height})
        count = rng.poisson(OBJECTS_PER_IMAGE)
        if not count:
            continue
        outlines = _outlines(rng, _object_boxes(rng, count, width, height), int(rng.integers(8, 25))).tolist()
        crowds = rng.random(count) < CROWD_FRACTION
        categories = rng.choice(category_ids, count).tolist()
        rles = mask_util.frPyObjects(outlines, height, width)
        for outline, rle, crowd, category, area, box in zip(outlines, rles, crowds, categories, mask_util.area(rles),
                                                            mask_util.toBbox(rles).tolist()):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                                "segmentation": _uncompressed_rle(rle) if crowd else [outline],
                                "area": float(area), "bbox": box, "iscrowd": int(crowd)})
    return {"images": images, "annotations": annotations,
            "categories": [{"id": int(i), "name": f"class_{i}", "supercategory": "thing"} for i in category_ids]}


def synthetic_detections(dataset: dict, per_image: int, rng: np.random.Generator) -> list[dict]:
    """``per_image`` detections per image as the evaluator's results (XYWH box, compressed RLE mask,
    score): 1-3 jittered copies of each object (20% with a random class; the larger the jitter, the
    lower the score), then random false positives with scores below 0.5, the best ``per_image`` kept."""
    category_ids = np.array([c["id"] for c in dataset["categories"]])
    objects: dict[int, list[dict]] = {image["id"]: [] for image in dataset["images"]}
    for ann in dataset["annotations"]:
        objects[ann["image_id"]].append(ann)
    results = []
    for image in dataset["images"]:
        width, height = image["width"], image["height"]
        anns = objects[image["id"]]
        copies = rng.integers(1, 4, len(anns))
        originals = np.array([ann["bbox"] for ann in anns], dtype=np.float64).reshape(-1, 4).repeat(copies, 0)
        categories = np.array([ann["category_id"] for ann in anns], dtype=np.int64).repeat(copies)
        jitter = np.abs(rng.normal(0.0, 0.12, len(originals)))[:, None]
        boxes = originals.copy()
        boxes[:, :2] += rng.normal(0.0, 1.0, (len(boxes), 2)) * jitter * boxes[:, 2:]
        boxes[:, 2:] *= np.exp(rng.normal(0.0, 1.0, (len(boxes), 2)) * jitter)
        relabel = rng.random(len(boxes)) >= 0.8
        categories[relabel] = rng.choice(category_ids, int(relabel.sum()))
        scores = np.clip(1.0 - 2.5 * jitter[:, 0] + rng.normal(0.0, 0.1, len(boxes)), 0.05, 1.0)
        # each copy's mask: its object's outline moved and scaled with the box (a crowd region's: a new one)
        outlines = [_outlines(rng, original[None], 12)[0] if ann["iscrowd"] else np.array(ann["segmentation"][0])
                    for ann, count in zip(anns, copies) for original in [np.array(ann["bbox"])] * count]
        outlines = [((outline.reshape(-1, 2) - old[:2]) * (new[2:] / np.maximum(old[2:], 1e-6)) + new[:2]).ravel()
                    for outline, old, new in zip(outlines, originals, boxes)]
        extra = max(per_image - len(boxes), 0)
        false_positives = _object_boxes(rng, extra, width, height)
        outlines += list(_outlines(rng, false_positives, 12))
        boxes = np.concatenate([boxes, false_positives])
        categories = np.concatenate([categories, rng.choice(category_ids, extra)])
        scores = np.concatenate([scores, rng.uniform(0.01, 0.5, extra)])
        keep = np.argsort(-scores, kind="stable")[:per_image]
        boxes = np.clip(boxes[keep], [0, 0, 1, 1], [width - 1, height - 1, width, height])
        rles = mask_util.frPyObjects([outlines[k].round(2).tolist() for k in keep], height, width)
        for box, category, score, rle in zip(boxes.tolist(), categories[keep].tolist(), scores[keep].tolist(), rles):
            rle["counts"] = rle["counts"].decode("utf-8")
            results.append({"image_id": image["id"], "category_id": category, "bbox": box, "score": score,
                            "segmentation": rle})
    return results


def pycocotools_metrics(coco_gt: COCO, results: list[dict], task: str, image_ids: list[int]):
    """The reference: pycocotools' COCOeval as the evaluator called it before faster-coco-eval."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes(results), task)
        coco_eval.params.imgIds = image_ids
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval.stats, coco_eval.eval["precision"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--detections", type=int, default=100, help="detections per image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-pycocotools", action="store_true",
                        help="time the project's evaluator alone (pycocotools' run needs ~0.65 GiB per 1,000 images)")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    dataset = synthetic_val(args.images, rng)
    results = synthetic_detections(dataset, args.detections, rng)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = dataset
        coco_gt.createIndex()
    anns = dataset["annotations"]
    areas = np.array([a["area"] for a in anns])
    print(f"ground truth: {len(dataset['images'])} images, {len(anns)} annotations ({sum(a['iscrowd'] for a in anns)} "
          f"crowd), small/medium/large {np.mean(areas < 32 ** 2):.2f}/{np.mean((areas >= 32 ** 2) & (areas < 96 ** 2)):.2f}/"
          f"{np.mean(areas >= 96 ** 2):.2f}; {len(results)} detections; generated in {time.perf_counter() - start:.1f} s")
    print(f"pycocotools {version('pycocotools')}, faster-coco-eval {version('faster-coco-eval')}, numpy "
          f"{np.__version__}, Python {platform.python_version()}")
    image_ids = sorted(coco_gt.getImgIds())
    implementations = {"faster-coco-eval": coco_task_metrics}
    if not args.skip_pycocotools:
        implementations = {"pycocotools": pycocotools_metrics, **implementations}
    rows, differences = [], []
    for task in ("bbox", "segm"):
        inputs = task_results(results, task)
        timings, outputs = {}, {}
        for name, evaluate in implementations.items():
            task_inputs = copy.deepcopy(inputs)  # loadRes writes ids and areas into the dicts
            gc.collect()
            tic = time.perf_counter()
            stats, precision = evaluate(coco_gt, task_inputs, task, image_ids)[:2]
            timings[name] = time.perf_counter() - tic
            outputs[name] = (np.asarray(stats), precision)
            del task_inputs
        stats, precision = outputs["faster-coco-eval"]
        row = [task, f"{timings['faster-coco-eval']:.1f}", f"{100 * stats[0]:.2f}"]
        if "pycocotools" in outputs:
            ref_stats, ref_precision = outputs["pycocotools"]
            stats_difference = float(np.max(np.abs(ref_stats - stats)))
            precision_difference = float(np.max(np.abs(ref_precision - precision)))
            differences.append(max(stats_difference, precision_difference))
            row[1:1] = [f"{timings['pycocotools']:.1f}"]
            row[3:3] = [f"{timings['pycocotools'] / timings['faster-coco-eval']:.1f}x"]
            row += [f"{100 * ref_stats[0]:.2f}", f"{stats_difference:.1e}", f"{precision_difference:.1e}"]
        rows.append(row)
    headers = ["task", "faster-coco-eval s", "AP"]
    if differences:
        headers = ["task", "pycocotools s", "faster-coco-eval s", "speed-up", "AP", "pycocotools AP",
                   "max |diff|, 12 figures", "max |diff|, precision"]
    print(tabulate(rows, headers=headers, tablefmt="pipe"))
    if differences:
        print("identical figures" if max(differences) <= 1e-12 else f"FIGURES DIFFER by up to {max(differences):.1e}")
    print(f"peak memory of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20:.2f} GiB")

if __name__ == "__main__":
    main()
