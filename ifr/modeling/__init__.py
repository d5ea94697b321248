"""Detection models built on torchvision ops and the ``ifr.deq`` core."""
from .build import ROI_HEADS, build_generalized_rcnn
from .mask_head import MASK_HEADS
from .meta_arch import GeneralizedRCNN

__all__ = ["GeneralizedRCNN", "MASK_HEADS", "ROI_HEADS", "build_generalized_rcnn"]
