"""COCO evaluation and the inference loop."""
from .coco_evaluation import COCOEvaluator, instances_to_coco_json, print_csv_format
from .inference import inference_on_dataset

__all__ = ["COCOEvaluator", "inference_on_dataset", "instances_to_coco_json", "print_csv_format"]
