"""COCO box and mask AP, reported as cvpods does (summary, tables, copypaste lines).

The AP is computed by faster-coco-eval, a C++ implementation of pycocotools' COCOeval that gives the
same figures (checked against pycocotools in tests/test_coco_metrics.py), 14-38x faster for bbox and
5-22x for segm on COCO-val-like data, by load and size (BENCHMARKS.md, benchmarks/coco_eval_bench.py);
pycocotools encodes the masks and indexes the ground truth."""
from __future__ import annotations

import contextlib
import itertools
import logging

import numpy as np
import torch
from faster_coco_eval import COCO as FasterCOCO
from faster_coco_eval import COCOeval_faster
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from tabulate import tabulate

from ifr.data.catalog import get_metadata
from ifr.data.coco import check_coco_evaluable, contiguous_category_ids, load_coco_api
from ifr.utils import comm
from ifr.utils.atomic import StagedFiles, json_writer

logger = logging.getLogger(__name__)

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
RESULT_FILES = ("instances_predictions.pth", "coco_instances_results.json", "coco_eval_results.json")


def instances_to_coco_json(instances: dict, image_id: int) -> list[dict]:
    """One image's detections (contiguous class ids) -> COCO result dicts (XYWH boxes, RLE masks).

    Each field comes to the host in one copy and is converted in bulk, and the (D, H, W) masks are
    RLE-encoded in one pycocotools call: no per-detection device sync."""
    boxes = instances["boxes"].cpu().clone()
    boxes[:, 2:] -= boxes[:, :2]
    classes = instances["classes"].cpu().to(torch.int64)
    results = [{"image_id": image_id, "category_id": category, "bbox": box, "score": score}
               for box, category, score in zip(boxes.tolist(), classes.tolist(), instances["scores"].cpu().tolist())]
    masks = instances.get("masks")
    if masks is not None and results:
        # pycocotools encodes an (H, W, D) Fortran-ordered uint8 array mask by mask
        rles = mask_util.encode(np.asfortranarray(masks.cpu().numpy().transpose(1, 2, 0), dtype=np.uint8))
        for result, rle in zip(results, rles):
            rle["counts"] = rle["counts"].decode("utf-8")
            result["segmentation"] = rle
    return results


def task_results(results: list[dict], task: str) -> list[dict]:
    """Copies of the result dicts that COCO evaluates for ``task``: for "segm" without their boxes, so
    that each detection's box (used for nothing but its area range there) is its mask's, as cvpods'."""
    return [{k: v for k, v in r.items() if not (task == "segm" and k == "bbox")} for r in results]


def coco_task_metrics(coco_gt: COCO, results: list[dict], task: str,
                      image_ids: list[int]) -> tuple[np.ndarray, np.ndarray, str]:
    """COCO AP of ``results`` (non-empty COCO result dicts, which get the ids and areas COCO's result
    loading writes into them) on the images ``image_ids`` of ``coco_gt`` for ``task`` ("bbox" or "segm"),
    computed by faster-coco-eval. Returns pycocotools' 12 summary figures (``COCOeval.stats``: AP,
    AP50, AP75, APs/m/l, AR1/10/100, ARs/m/l, -1 where there is nothing to score), the precision array
    (IoU thresholds 10, recall thresholds 101, categories K, area ranges 4, max detections 3) and the
    summary text (progress lines and the 12 figures' lines)."""
    lines: list[str] = []
    # faster-coco-eval's own index of the same dataset, a shallow copy: it writes "ignore" and (segm) the
    # masks' RLEs into coco_gt's annotation dicts, as pycocotools' COCOeval writes "ignore"
    ground_truth = FasterCOCO(coco_gt.dataset)
    coco_eval = COCOeval_faster(ground_truth, ground_truth.loadRes(results), task, print_function=lines.append)
    coco_eval.params.imgIds = image_ids
    coco_eval.evaluate()
    coco_eval.accumulate()
    progress = lines[:]
    lines.clear()
    coco_eval.summarize()
    # summarize() also prints AR50 and AR75 after the 12 figures; the summary keeps pycocotools' 12
    summary = "\n".join(progress + lines[:len(coco_eval.stats)])
    return np.asarray(coco_eval.stats), coco_eval.eval["precision"], summary


class COCOEvaluator:
    """Collects predictions with ``process`` and computes AP with ``evaluate``; writes
    ``coco_instances_results.json``, ``instances_predictions.pth`` and ``coco_eval_results.json``
    into ``output_dir``. A dataset on which COCO AP can score nothing (no categories or annotations,
    or fewer categories than the model's ``num_classes``) is refused when the evaluator is built."""

    def __init__(self, dataset_name: str, output_dir: str | None = None, tasks: tuple[str, ...] = ("bbox", "segm"),
                 num_classes: int | None = None):
        self.dataset_name = dataset_name
        self.output_dir = output_dir
        self.tasks = tuple(sorted(tasks))
        json_file = get_metadata(dataset_name)["json_file"]
        self.coco_gt = load_coco_api(json_file)
        check_coco_evaluable(self.coco_gt, json_file, num_classes, self.tasks)
        self.contiguous_to_coco = {v: k for k, v in contiguous_category_ids(self.coco_gt).items()}
        self.class_names = [self.coco_gt.cats[self.contiguous_to_coco[i]]["name"]
                            for i in range(len(self.contiguous_to_coco))]
        self.reset()

    def reset(self) -> None:
        self._predictions: list[dict] = []

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        for x, y in zip(inputs, outputs):
            self._predictions.append({"image_id": x["image_id"],
                                      "instances": instances_to_coco_json(y["instances"], x["image_id"])})

    def evaluate(self) -> dict[str, dict[str, float]]:
        predictions = list(itertools.chain.from_iterable(comm.all_gather(self._predictions)))
        if not comm.is_main_process():
            return {}
        results = list(itertools.chain.from_iterable(p["instances"] for p in predictions))
        # The three files replace the previous evaluation's together, once all are written.
        files = StagedFiles(self.output_dir, RESULT_FILES) if self.output_dir else None
        with files or contextlib.nullcontext():
            if files:
                files.stage("instances_predictions.pth", lambda path: torch.save(predictions, path))
            for r in results:
                r["category_id"] = self.contiguous_to_coco[r["category_id"]]
            if files:
                files.stage("coco_instances_results.json", json_writer(results))
            image_ids = sorted({p["image_id"] for p in predictions})
            scores = {task: self._evaluate_task(task, results, image_ids) for task in self.tasks}
            if files:
                files.stage("coco_eval_results.json", json_writer(scores, indent=2))
        return scores

    def _evaluate_task(self, task: str, results: list[dict], image_ids: list[int]) -> dict[str, float]:
        inputs = task_results(results, task)
        if not inputs:
            logger.warning("[COCOEvaluator] no predictions for %s on %s: every AP is 0", task, self.dataset_name)
            scores = {m: 0.0 for m in METRICS}
            scores.update({f"AP-{name}": 0.0 for name in self.class_names})
            self._print_tables(task, scores, "no predictions")
            return scores
        stats, precision, summary = coco_task_metrics(self.coco_gt, inputs, task, image_ids)
        scores = {m: float(s * 100 if s >= 0 else "nan") for m, s in zip(METRICS, stats)}
        for k, name in enumerate(self.class_names):
            p = precision[:, :, k, 0, -1]
            p = p[p > -1]
            scores[f"AP-{name}"] = float(np.mean(p) * 100) if p.size else float("nan")
        self._print_tables(task, scores, summary)
        return scores

    def _print_tables(self, task: str, scores: dict[str, float], summary: str) -> None:
        table = tabulate([[scores[m] for m in METRICS]], headers=METRICS, tablefmt="pipe", floatfmt=".3f",
                         numalign="center")
        logger.info("Evaluation results for %s: \n%s\n%s", task, summary.rstrip(), table)
        per_class = list(itertools.chain.from_iterable((name, f"{scores[f'AP-{name}']:.3f}")
                                                       for name in self.class_names))
        columns = min(6, len(per_class))
        rows = itertools.zip_longest(*[per_class[i::columns] for i in range(columns)])
        logger.info("Per-category %s AP: \n%s", task,
                    tabulate(rows, headers=["category", "AP"] * (columns // 2), tablefmt="pipe", disable_numparse=True))


def print_csv_format(results: dict[str, dict[str, float]]) -> None:
    """The ``copypaste:`` lines cvpods prints for pasting into spreadsheets."""
    for task, scores in results.items():
        main = [(k, v) for k, v in scores.items() if "-" not in k]
        logger.info("copypaste: Task: %s", task)
        logger.info("copypaste: %s", ",".join(k for k, _ in main))
        logger.info("copypaste: %s", ",".join(f"{v:.4f}" for _, v in main))
