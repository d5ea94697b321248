"""Mask R-CNN whose mask head is the IFR block (no weight norm) applied NUM_CONV times."""
from ifr.modeling import build_generalized_rcnn


def build_model(cfg):
    return build_generalized_rcnn(cfg, mask_head="weight_sharing")
