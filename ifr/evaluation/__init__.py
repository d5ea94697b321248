"""COCO evaluation and the inference loop."""
from .coco_evaluation import COCOEvaluator, instances_to_coco_json, print_csv_format
from .expected_results import PUBLISHED_TOLERANCE, ResultsMismatch, expected, verify_results
from .keypoint_evaluation import COCOKeypointEvaluator, keypoint_ap, keypoints_to_coco_json
from .inference import InferenceTiming, inference_on_dataset, run_inference

__all__ = ["COCOEvaluator", "COCOKeypointEvaluator", "keypoint_ap", "keypoints_to_coco_json", "InferenceTiming", "PUBLISHED_TOLERANCE", "ResultsMismatch", "expected", "inference_on_dataset", "instances_to_coco_json",
           "print_csv_format", "run_inference", "verify_results"]
