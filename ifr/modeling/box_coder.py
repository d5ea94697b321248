"""Box regression deltas <-> boxes, always in float32.

torchvision's ``BoxCoder`` computes in the deltas' dtype. Under mixed precision the deltas come out
of a float16 (bfloat16 on the CPU) layer, and float16 rounds COCO-scale coordinates to 0.5-1 px and
overflows to inf for a large delta times a large box, so the proposals, the sampled boxes and the
cascade's refined boxes would be carried in half precision. As detectron2 does, boxes here are
float32 whatever the autocast state: deltas and reference boxes are cast up before the arithmetic.
"""
from __future__ import annotations

import math

import torch
from torchvision.models.detection._utils import BoxCoder

# Largest log-scale a predicted box may grow by (cvpods/detectron2's _DEFAULT_SCALE_CLAMP).
SCALE_CLAMP = math.log(1000.0 / 16)


class Float32BoxCoder(BoxCoder):
    """``BoxCoder`` whose ``encode_single`` / ``decode_single`` take and return float32 tensors:
    (R, 4) boxes and (R, 4k) deltas. Deltas are clamped in width and height by ``bbox_xform_clip``
    as in ``BoxCoder``, so a finite delta always decodes to a finite box."""

    def encode_single(self, reference_boxes: torch.Tensor, proposals: torch.Tensor) -> torch.Tensor:
        return super().encode_single(reference_boxes.float(), proposals.float())

    def decode_single(self, rel_codes: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        with torch.autocast(rel_codes.device.type, enabled=False):
            return super().decode_single(rel_codes.float(), boxes.float())
