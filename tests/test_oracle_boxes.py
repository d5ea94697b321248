"""TEST.ORACLE_BOXES: mask AP on the ground-truth boxes."""
import pytest
import torch
import torch.nn.functional as F

from ifr.data import get_dataset_dicts
from ifr.data.mapper import segmentation_to_mask
from ifr.engine.defaults import evaluate
from ifr.evaluation import COCOEvaluator
from ifr.paths import EXPERIMENTS
from ifr.presets import small_model_overrides
from ifr.tools.experiment import load_experiment

from helpers import TINY


def _erode(masks: torch.Tensor, pixels: int) -> torch.Tensor:
    kept = masks.float()[:, None]
    for _ in range(pixels):
        kept = 1 - F.max_pool2d(1 - kept, 3, stride=1, padding=1)
    return kept[:, 0] > 0.5


def _segm_ap_of_ground_truth_masks(dataset: str, erosion: int) -> float:
    evaluator = COCOEvaluator(dataset, output_dir=None, tasks=("segm",))
    for record in get_dataset_dicts(dataset):
        annotations = [a for a in record["annotations"] if not a.get("iscrowd", 0)]
        masks = torch.stack([torch.from_numpy(segmentation_to_mask(a["segmentation"], record["height"],
                                                                    record["width"])) for a in annotations]).bool()
        xywh = torch.tensor([a["bbox"] for a in annotations])
        instances = {"boxes": torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1), "scores": torch.ones(len(xywh)),
                     "classes": torch.tensor([a["category_id"] for a in annotations]), "masks": _erode(masks, erosion)}
        evaluator.process([record], [{"instances": instances}])
    return evaluator.evaluate()["segm"]["AP"]


def test_perfect_masks_score_100_and_eroded_masks_score_less(val_subset):
    aps = [_segm_ap_of_ground_truth_masks(val_subset, erosion) for erosion in (0, 1, 2)]
    assert aps[0] == pytest.approx(100.0, abs=1e-6)
    assert aps[0] > aps[1] > aps[2]


def test_oracle_evaluation_predicts_masks_on_the_ground_truth_boxes(tmp_path, val_subset, device):
    config, build_model = load_experiment(EXPERIMENTS["ifr"])
    config.merge(small_model_overrides(max_iter=10))
    config.merge_from_list([*TINY, "TEST.ORACLE_BOXES", "True", "OUTPUT_DIR", str(tmp_path), "MODEL.DEVICE", device.type])
    torch.manual_seed(0)
    results = evaluate(config, build_model(config).to(device).eval(), show_progress=False)
    assert results["bbox"]["AP"] == pytest.approx(100.0, abs=0.05)  # the boxes are the ground truth
    assert 0.0 <= results["segm"]["AP"] < 100.0  # an untrained mask head
    assert (tmp_path / "inference_oracle_boxes" / "coco_instances_results.json").is_file()
