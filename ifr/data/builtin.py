"""Datasets available by name without registration: COCO 2017 (cvpods layout), the synthetic shapes and
the synthetic keypoints.

The root folder is ``$IFR_DATASETS`` if set, else ``datasets/`` in the project checkout (as cvpods
keeps ``datasets/coco`` beside its code).
"""
from __future__ import annotations

import os

from ifr.paths import datasets_root

from .catalog import register_dataset
from .coco import load_coco_json
from .synthetic import SHAPES, SyntheticDataset, ensure_synthetic_dataset
from .synthetic_hard import HARD
from .synthetic_keypoints import KEYPOINT_HOUSES

# name -> (folder under the root, json file under that folder, image folder under that folder)
COCO_SPLITS = {
    "coco_2017_train": ("coco", "annotations/instances_train2017.json", "train2017"),
    "coco_2017_val": ("coco", "annotations/instances_val2017.json", "val2017"),
}
SYNTHETIC_SPLITS = {
    "synthetic_shapes_train": ("synthetic_shapes", "annotations/instances_train.json", "train"),
    "synthetic_shapes_val": ("synthetic_shapes", "annotations/instances_val.json", "val"),
    "synthetic_hard_train": ("synthetic_hard", "annotations/instances_train.json", "train"),
    "synthetic_hard_val": ("synthetic_hard", "annotations/instances_val.json", "val"),
    "synthetic_keypoints_train": ("synthetic_keypoints", "annotations/instances_train.json", "train"),
    "synthetic_keypoints_val": ("synthetic_keypoints", "annotations/instances_val.json", "val"),
}
# folder -> generator
SYNTHETIC_DATASETS = {"synthetic_shapes": SHAPES, "synthetic_hard": HARD, "synthetic_keypoints": KEYPOINT_HOUSES}


# The 80 COCO thing classes in contiguous-id order (sorted category id), so class names are known
# without the annotation files (e.g. for the demo on released weights).
COCO_THING_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)


def _paths(folder: str, json_file: str, image_dir: str, synthetic: bool) -> dict:
    base = os.path.join(datasets_root(), folder)
    generator: SyntheticDataset | None = SYNTHETIC_DATASETS[folder] if synthetic else None
    if generator is not None:
        ensure_synthetic_dataset(base, generator)
    metadata = {"thing_classes": generator.classes if generator else COCO_THING_CLASSES}
    if generator is not None and generator.keypoints is not None:
        schema = generator.keypoints
        metadata.update(keypoint_names=schema.names, keypoint_flip_pairs=schema.flip_pairs,
                        keypoint_oks_sigmas=schema.oks_sigmas, keypoint_skeleton=schema.skeleton)
    return {"json_file": os.path.join(base, json_file), "image_root": os.path.join(base, image_dir),
            "evaluator_type": "coco", "synthetic": synthetic, **metadata}


def _register(name: str, spec: tuple[str, str, str], synthetic: bool) -> None:
    metadata = lambda: _paths(*spec, synthetic)  # noqa: E731 (resolved when used: IFR_DATASETS may change)

    def loader() -> list[dict]:
        paths = metadata()
        return load_coco_json(paths["json_file"], paths["image_root"])

    register_dataset(name, loader, metadata)


for _name, _spec in COCO_SPLITS.items():
    _register(_name, _spec, synthetic=False)
for _name, _spec in SYNTHETIC_SPLITS.items():
    _register(_name, _spec, synthetic=True)
