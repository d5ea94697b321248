"""Masks predicted on the ground-truth boxes (TEST.ORACLE_BOXES): the mask head's quality without
the box head's errors, scored like any detection result."""
from __future__ import annotations

import torch
from torch import nn

from .meta_arch import GeneralizedRCNN
from .postprocessing import detector_postprocess


class GroundTruthBoxesMaskPredictor(nn.Module):
    """Wraps a ``GeneralizedRCNN``: for inputs carrying ``instances`` (``boxes`` (G, 4) at the network
    input's size and ``classes`` (G,), as ``DatasetMapper`` makes them with annotations), every
    ground-truth box becomes a detection of its true class with score 1, and the mask head predicts
    its mask. Outputs ``[{"instances": ...}]`` at the original size, like the model's inference."""

    def __init__(self, model: GeneralizedRCNN):
        super().__init__()
        self.model = model

    @torch.no_grad()
    def forward(self, batched_inputs: list[dict]) -> list[dict]:
        images, sizes = self.model.preprocess_image(batched_inputs)
        features = self.model.backbone(images)
        detections = []
        for x in batched_inputs:
            boxes = x["instances"]["boxes"].to(self.model.device)
            detections.append({"boxes": boxes, "classes": x["instances"]["classes"].to(self.model.device),
                               "scores": torch.ones(len(boxes), device=boxes.device)})
        self.model.roi_heads.predict_masks(features, detections)
        return [{"instances": detector_postprocess(d, size, (x["height"], x["width"]))}
                for d, size, x in zip(detections, sizes, batched_inputs)]
