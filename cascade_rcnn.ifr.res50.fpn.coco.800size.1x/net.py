"""3-stage Cascade Mask R-CNN whose mask head refines RoI features to the IFR block's fixed point."""
from ifr.modeling import build_generalized_rcnn


def build_model(cfg):
    return build_generalized_rcnn(cfg, roi_heads="cascade", mask_head="ifr")
