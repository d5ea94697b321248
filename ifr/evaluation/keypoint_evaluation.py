"""COCO keypoint AP with pycocotools (COCOeval's "keypoints" task at the dataset's own OKS sigmas)."""
from __future__ import annotations

import contextlib
import io
import logging

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ifr.data.catalog import get_metadata
from ifr.data.coco import check_coco_evaluable, contiguous_category_ids, load_coco_api
from ifr.errors import UserError

logger = logging.getLogger(__name__)

# COCOeval's keypoint summary (stats[:5]); keypoint AP has no small-object range.
KEYPOINT_METRICS = ("AP", "AP50", "AP75", "APm", "APl")


def keypoints_to_coco_json(boxes: torch.Tensor, scores: torch.Tensor, keypoints: torch.Tensor, image_id: int,
                           category_id: int) -> list[dict]:
    """One image's detections, boxes (D, 4) xyxy, scores (D,), keypoints (D, K, 3) (x, y, score or
    visibility) -> COCO keypoint result dicts of category ``category_id`` (a COCO id)."""
    boxes = boxes.cpu().clone()
    boxes[:, 2:] -= boxes[:, :2]
    return [{"image_id": image_id, "category_id": category_id, "bbox": box, "score": score,
             "keypoints": [round(v, 3) for v in points.flatten()]}
            for box, score, points in zip(boxes.tolist(), scores.cpu().tolist(), keypoints.cpu().numpy())]


def keypoint_ap(coco_gt: COCO, results: list[dict], oks_sigmas, image_ids: list[int] | None = None
                ) -> dict[str, float]:
    """COCOeval's keypoint AP (in percent) of ``results`` against ``coco_gt`` at ``oks_sigmas`` (one per
    keypoint, in the category's keypoint order), over ``image_ids`` (default: every image). No result
    scores 0 (COCOeval cannot evaluate an empty list)."""
    sigmas = np.asarray(oks_sigmas, dtype=np.float64)
    counts = {len(c.get("keypoints", [])) for c in coco_gt.dataset["categories"]}
    if counts != {len(sigmas)}:
        raise UserError(f"{len(sigmas)} OKS sigmas for categories with {sorted(counts)} keypoints: give one sigma per "
                        "keypoint of the dataset's category")
    if not results:
        logger.warning("no keypoint predictions: every keypoint AP is 0")
        return {m: 0.0 for m in KEYPOINT_METRICS}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results)
        coco_eval = COCOeval(coco_gt, coco_dt, "keypoints")
        coco_eval.params.kpt_oks_sigmas = sigmas
        coco_eval.params.imgIds = sorted(coco_gt.getImgIds()) if image_ids is None else image_ids
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return {m: float(s * 100 if s >= 0 else "nan") for m, s in zip(KEYPOINT_METRICS, coco_eval.stats)}


class COCOKeypointEvaluator:
    """Collects torchvision Keypoint R-CNN outputs with ``process`` and computes keypoint AP with
    ``evaluate`` at the dataset's ``keypoint_oks_sigmas`` (its metadata, as the built-in
    ``synthetic_keypoints_*`` sets give)."""

    def __init__(self, dataset_name: str):
        metadata = get_metadata(dataset_name)
        if "keypoint_oks_sigmas" not in metadata:
            raise UserError(f"dataset {dataset_name!r} has no keypoint_oks_sigmas in its metadata: keypoint AP needs "
                            "one OKS sigma per keypoint; register it with keypoint_oks_sigmas=(...)")
        self.oks_sigmas = metadata["keypoint_oks_sigmas"]
        self.coco_gt = load_coco_api(metadata["json_file"])
        check_coco_evaluable(self.coco_gt, metadata["json_file"])
        self.contiguous_to_coco = {v: k for k, v in contiguous_category_ids(self.coco_gt).items()}
        self.results: list[dict] = []
        self.image_ids: list[int] = []

    def process(self, image_id: int, output: dict) -> None:
        """``output``: one image's torchvision detections (``boxes``, ``scores``, ``labels`` with 0 the
        background, ``keypoints`` (D, K, 3))."""
        self.image_ids.append(image_id)
        for label in output["labels"].unique().tolist():
            chosen = output["labels"] == label
            self.results.extend(keypoints_to_coco_json(output["boxes"][chosen], output["scores"][chosen],
                                                       output["keypoints"][chosen], image_id,
                                                       self.contiguous_to_coco[label - 1]))

    def evaluate(self) -> dict[str, float]:
        return keypoint_ap(self.coco_gt, self.results, self.oks_sigmas, sorted(self.image_ids))
