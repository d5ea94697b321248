"""The evaluator's COCO AP (faster-coco-eval) against pycocotools' COCOeval, the reference: every summary
figure, the precision array, the per-category AP and the summary lines, bbox and segm, on the built-in
data and on a copy of it with the cases COCO evaluation treats specially (crowd regions, an image
without annotations, a category without ground truth, images without detections, equal scores,
nothing to score)."""
import contextlib
import io
import json
import math

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ifr.data import get_metadata
from ifr.data.catalog import registered_datasets
from ifr.data.coco import contiguous_category_ids, register_coco_instances
from ifr.data.mapper import segmentation_to_mask
from ifr.evaluation import COCOEvaluator
from ifr.evaluation.coco_evaluation import METRICS, coco_task_metrics, task_results

EDGE_CASES = "synthetic_shapes_val_coco_edge_cases"
CROWD_ONLY, PARTLY_CROWD, UNANNOTATED, UNDETECTED = 2, 3, 4, 5  # image indices in the edge-case set


def reference_metrics(coco_gt: COCO, results: list[dict], task: str, image_ids: list[int]):
    """pycocotools' COCOeval as the evaluator called it before: stats, precision, printed summary."""
    inputs = [{k: v for k, v in r.items() if not (task == "segm" and k == "bbox")} for r in results]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes(inputs), task)
        coco_eval.params.imgIds = image_ids
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval.stats, coco_eval.eval["precision"], printed.getvalue()


def reference_scores(stats: np.ndarray, precision: np.ndarray, class_names: list[str]) -> dict[str, float]:
    """cvpods' figures from pycocotools' arrays: the 6 AP in percent (NaN where COCOeval reports -1),
    per category the mean precision over IoU thresholds and recall levels (area all, 100 detections)."""
    scores = {m: 100 * s if s >= 0 else math.nan for m, s in zip(METRICS, stats)}
    for k, name in enumerate(class_names):
        p = precision[:, :, k, 0, -1]
        scores[f"AP-{name}"] = 100 * p[p > -1].mean() if (p > -1).any() else math.nan
    return scores


@pytest.fixture(scope="module")
def edge_cases(val_subset, tmp_path_factory):
    """The first 12 images of the synthetic val split, with image 2's objects all crowd regions, one of
    image 3's a crowd region (uncompressed RLE, as COCO's), image 4 without annotations and a category
    that no annotation has."""
    if EDGE_CASES not in registered_datasets():
        metadata = get_metadata("synthetic_shapes_val")
        dataset = json.load(open(metadata["json_file"]))
        images = dataset["images"][:12]
        ids = [image["id"] for image in images]
        annotations = [a for a in dataset["annotations"] if a["image_id"] in ids and a["image_id"] != ids[UNANNOTATED]]
        partly = [a for a in annotations if a["image_id"] == ids[PARTLY_CROWD]]
        assert len(partly) >= 2
        sizes = {image["id"]: (image["height"], image["width"]) for image in images}
        for ann in [a for a in annotations if a["image_id"] == ids[CROWD_ONLY]] + partly[:1]:
            mask = segmentation_to_mask(ann["segmentation"], *sizes[ann["image_id"]]).ravel(order="F")
            runs = np.diff(np.concatenate([[0], np.flatnonzero(np.diff(mask)) + 1, [mask.size]])).tolist()
            ann.update(iscrowd=1, segmentation={"counts": runs if mask[0] == 0 else [0, *runs],
                                                "size": list(sizes[ann["image_id"]])})
        categories = dataset["categories"] + [{"id": max(c["id"] for c in dataset["categories"]) + 1,
                                               "name": "unseen", "supercategory": "shape"}]
        json_file = tmp_path_factory.mktemp("edge_cases") / "instances.json"
        json_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
        register_coco_instances(EDGE_CASES, str(json_file), metadata["image_root"])
    return EDGE_CASES


def detections(coco_gt: COCO, image_id: int, generator: torch.Generator, tied_scores: bool) -> dict:
    """Two shifted copies of each object (a quarter of them with a random class) and three random false
    positives, with random scores (``tied_scores``: tenths, so that many are equal and the order of
    equal scores counts): the evaluator's per-image instances (contiguous class ids)."""
    image = coco_gt.imgs[image_id]
    height, width = image["height"], image["width"]
    to_contiguous = contiguous_category_ids(coco_gt)
    masks, classes = [], []
    for ann in coco_gt.imgToAnns[image_id]:
        mask = torch.from_numpy(segmentation_to_mask(ann["segmentation"], height, width)).bool()
        for _ in range(2):
            shift = torch.randint(-3, 4, (2,), generator=generator).tolist()
            masks.append(torch.roll(mask, shift, dims=(0, 1)))
            classes.append(to_contiguous[ann["category_id"]])
    for _ in range(3):
        x, y = torch.randint(0, width - 8, (1,), generator=generator).item(), torch.randint(0, height - 8, (1,), generator=generator).item()
        mask = torch.zeros(height, width, dtype=torch.bool)
        mask[y:y + 8 + y % 20, x:x + 8 + x % 20] = True
        masks.append(mask)
        classes.append(0)
    classes = torch.tensor(classes)
    relabel = torch.rand(len(classes), generator=generator) < 0.25
    classes[relabel] = torch.randint(0, len(to_contiguous), (int(relabel.sum()),), generator=generator)
    masks = torch.stack(masks)
    ys, xs = masks.any(2), masks.any(1)
    boxes = torch.stack([xs.float().argmax(1), ys.float().argmax(1), width - xs.flip(1).float().argmax(1),
                         height - ys.flip(1).float().argmax(1)], 1).float()
    scores = torch.rand(len(classes), generator=generator)
    if tied_scores:
        scores = torch.randint(1, 11, (len(classes),), generator=generator) / 10
    return {"boxes": boxes, "scores": scores, "classes": classes, "masks": masks}


def evaluate_both(dataset: str, output_dir, image_indices=None, undetected=()):
    """The evaluator's scores on ``dataset`` (detections on the images ``image_indices``, none on
    ``undetected``) and pycocotools' reference on the results file it wrote."""
    evaluator = COCOEvaluator(dataset, str(output_dir))
    coco_gt = evaluator.coco_gt
    image_ids = sorted(coco_gt.getImgIds())
    generator = torch.Generator().manual_seed(0)
    for index in image_indices or range(len(image_ids)):
        image_id = image_ids[index]
        instances = detections(coco_gt, image_id, generator, tied_scores=dataset == EDGE_CASES)
        if index in undetected:
            instances = {k: v[:0] for k, v in instances.items()}
        evaluator.process([{"image_id": image_id}], [{"instances": instances}])
    scores = evaluator.evaluate()
    results = json.load(open(output_dir / "coco_instances_results.json"))
    reference_gt = COCO()
    reference_gt.dataset = json.load(open(get_metadata(dataset)["json_file"]))
    with contextlib.redirect_stdout(io.StringIO()):
        reference_gt.createIndex()
    evaluated = sorted({image_ids[i] for i in (image_indices or range(len(image_ids)))})
    return evaluator, scores, results, reference_gt, evaluated


@pytest.mark.parametrize("edge", [False, True], ids=["builtin", "edge_cases"])
def test_ap_equals_pycocotools(edge, edge_cases, tmp_path):
    dataset = edge_cases if edge else "synthetic_shapes_val"
    evaluator, scores, results, reference_gt, image_ids = evaluate_both(
        dataset, tmp_path, image_indices=None if edge else range(12), undetected=(UNDETECTED,) if edge else ())
    for task in ("bbox", "segm"):
        stats, precision, printed = reference_metrics(reference_gt, results, task, image_ids)
        assert 20 < 100 * stats[0] < 95  # detections that score, not perfect ones
        # the evaluator's figures: the 6 AP and every category's
        expected = reference_scores(stats, precision, evaluator.class_names)
        assert scores[task].keys() == expected.keys()
        for name, value in expected.items():
            assert scores[task][name] == pytest.approx(value, abs=1e-12, nan_ok=True), (task, name)
        # the 12 figures and the whole precision array, and the summary's lines
        ours, our_precision, summary = coco_task_metrics(reference_gt, task_results(results, task), task, image_ids)
        np.testing.assert_allclose(ours, stats, rtol=0, atol=1e-12)
        assert our_precision.shape == precision.shape
        np.testing.assert_allclose(our_precision, precision, rtol=0, atol=1e-12)
        figures = [line for line in printed.splitlines() if line.startswith(" Average")]
        assert [line for line in summary.splitlines() if line.startswith(" Average")] == figures and len(figures) == 12
    if edge:
        assert math.isnan(scores["segm"]["AP-unseen"])  # detected, never annotated: no AP, as pycocotools
        assert any(r["image_id"] == image_ids[CROWD_ONLY] for r in results)


def test_an_evaluation_that_scores_nothing(edge_cases, tmp_path):
    """Only the crowd-only and the unannotated image: COCOeval has no ground truth to score (-1 everywhere)."""
    _, scores, results, reference_gt, image_ids = evaluate_both(edge_cases, tmp_path,
                                                                image_indices=(CROWD_ONLY, UNANNOTATED))
    for task in ("bbox", "segm"):
        stats, precision, _ = reference_metrics(reference_gt, results, task, image_ids)
        assert (stats == -1).all() and (precision == -1).all()
        assert all(math.isnan(v) for v in scores[task].values())
        ours, our_precision, _ = coco_task_metrics(reference_gt, task_results(results, task), task, image_ids)
        assert (ours == -1).all() and (our_precision == -1).all()
