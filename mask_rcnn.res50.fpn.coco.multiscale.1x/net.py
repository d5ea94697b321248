"""Mask R-CNN with the standard mask head: four 3x3 convs (256 channels, ReLU), deconv, predictor."""
from ifr.modeling import build_generalized_rcnn


def build_model(cfg):
    return build_generalized_rcnn(cfg, mask_head="conv")
