"""Where the checkout's parts are: its root (the folder holding ``ifr/``), the experiment folders,
and the default homes of datasets and outputs (``$IFR_DATASETS``, ``$IFR_OUTPUT_ROOT`` override them)."""
from __future__ import annotations

import os

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The experiment folders of the checkout, by the mask head / detector they hold.
EXPERIMENTS = {
    "baseline": os.path.join(PROJECT_ROOT, "mask_rcnn.res50.fpn.coco.multiscale.1x"),
    "ifr": os.path.join(PROJECT_ROOT, "mask_rcnn.ifr.res50.fpn.coco.multiscale.1x"),
    "weight_sharing": os.path.join(PROJECT_ROOT, "mask_rcnn.res50.fpn.coco.multiscale.weight_sharing.1x"),
    "cascade": os.path.join(PROJECT_ROOT, "cascade_rcnn.ifr.res50.fpn.coco.800size.1x"),
}


def datasets_root() -> str:
    return os.environ.get("IFR_DATASETS", os.path.join(PROJECT_ROOT, "datasets"))


def output_root() -> str:
    return os.environ.get("IFR_OUTPUT_ROOT", os.path.join(PROJECT_ROOT, "output"))
