"""cvpods keys this project accepts but does not implement: any value but the supported one is a
ConfigError naming the key, so a config never measures something other than what it says."""
from __future__ import annotations

from typing import Any, Mapping

from .config_dict import ConfigError

# key -> (the one supported value, why other values are refused).
UNSUPPORTED = {
    "MODEL.AS_PRETRAIN": (False, "cvpods' self-supervised pre-training mode is not implemented"),
    "MODEL.LOAD_PROPOSALS": (False, "precomputed proposals are not implemented; the RPN computes them"),
    "MODEL.KEYPOINT_ON": (False, "keypoint heads are not implemented"),
    "MODEL.NMS_TYPE": ("normal", "only standard NMS is implemented (no soft-NMS)"),
    "MODEL.PROPOSAL_GENERATOR.NAME": ("RPN", "the RPN is the only proposal generator"),
    "MODEL.RESNETS.DEEP_STEM": (False, "torchvision's ResNets have the single 7x7 stem only"),
    "MODEL.RESNETS.STEM_OUT_CHANNELS": (64, "torchvision's ResNet stem has 64 channels"),
    "MODEL.RESNETS.RES5_DILATION": (
        1, "a dilated res5 has res4's stride, and an FPN needs each level's stride to double (cvpods' FPN "
           "asserts the same); every model here is FPN-based"),
    "MODEL.FPN.FUSE_TYPE": ("sum", "torchvision's FPN sums the top-down and lateral paths (no 'avg')"),
    "MODEL.FPN.BLOCK_IN_FEATURES": ("p5", "p6 is a max-pool of p5 (LastLevelMaxPool), the R-CNN top block"),
    "MODEL.RPN.BOUNDARY_THRESH": (-1, "anchors crossing the image border are kept (cvpods' default)"),
    "MODEL.RPN.IOU_LABELS": ([0, -1, 1], "RPN matching labels are fixed: background, ignored, foreground"),
    "MODEL.ROI_HEADS.IOU_LABELS": ([0, 1], "ROI matching labels are fixed: background, foreground"),
    "MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES": (False, "training the mask head on predicted boxes is not implemented"),
    "INPUT.MASK_FORMAT": ("bitmask", "polygon mask targets are not implemented: every mask is rasterised at image "
                                     "resolution and cropped by RoIAlign (detectron2's bitmask targets)"),
    "VIS_PERIOD": (0, "training-time visualisation is not implemented; draw predictions with pods_demo"),
}


def lookup(cfg: Mapping, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def _same(value: Any, supported: Any) -> bool:
    if isinstance(supported, (list, tuple)) and isinstance(value, (list, tuple)):
        return list(value) == list(supported)
    return value == supported


def check_supported(cfg: Mapping) -> None:
    """Raises a ConfigError naming every key of ``UNSUPPORTED`` set to another value than the supported one."""
    refused = [f"{key} {lookup(cfg, key)!r} is not supported ({reason}); use {supported!r}"
               for key, (supported, reason) in UNSUPPORTED.items() if not _same(lookup(cfg, key), supported)]
    if refused:
        raise ConfigError("; ".join(refused))


def non_default(node: Mapping, defaults: Mapping, keys, prefix: str) -> list[str]:
    """The ``prefix.KEY`` names of ``keys`` whose value in ``node`` differs from ``defaults``."""
    return [f"{prefix}.{key}" for key in keys if not _same(node[key], defaults[key])]
