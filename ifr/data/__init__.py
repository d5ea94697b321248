"""Datasets (registered by name), the record -> model-input mapper, samplers and loaders."""
from . import builtin  # noqa: F401  (registers coco_2017_* and synthetic_shapes_*)
from .build import build_test_loader, build_train_loader, check_datasets
from .catalog import get_dataset_dicts, get_metadata, register_dataset, registered_datasets
from .coco import DatasetError, dataset_class_names, load_coco_json, register_coco_instances
from .image_reader import ImageReadError, read_image, to_rgb
from .mapper import DatasetMapper

__all__ = ["DatasetError", "DatasetMapper", "ImageReadError", "build_test_loader", "dataset_class_names",
           "build_train_loader", "check_datasets", "get_dataset_dicts", "get_metadata", "load_coco_json", "read_image",
           "register_coco_instances", "register_dataset", "registered_datasets", "to_rgb"]
