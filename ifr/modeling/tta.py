"""Test-time augmentation for every R-CNN here (standard or cascade ROI heads, any mask head).

As detectron2's GeneralizedRCNNWithTTA: the detections of every view (each short edge of TEST.AUG
.MIN_SIZES, each also flipped) are mapped to the original image's coordinates and merged by per-class
NMS; then the mask head runs on the merged boxes in every view and the mask probabilities are
averaged (flipped views' masks flipped back) before pasting. With the IFR head each view's mask
solve is an ordinary solve with the configured solver.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import batched_nms, clip_boxes_to_image

from ifr.config import ConfigError

from .meta_arch import GeneralizedRCNN
from .postprocessing import detector_postprocess


def view_to_original(boxes: torch.Tensor, view_size: tuple[int, int], original_size: tuple[int, int],
                     flipped: bool) -> torch.Tensor:
    """(R, 4) boxes of a (h, w) view (horizontally flipped or not) -> boxes on the (H, W) original."""
    (h, w), (height, width) = view_size, original_size
    if flipped:
        boxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=1)
    return boxes * boxes.new_tensor([width / w, height / h, width / w, height / h])


def original_to_view(boxes: torch.Tensor, view_size: tuple[int, int], original_size: tuple[int, int],
                     flipped: bool) -> torch.Tensor:
    """The inverse of ``view_to_original``."""
    (h, w), (height, width) = view_size, original_size
    boxes = boxes * boxes.new_tensor([w / width, h / height, w / width, h / height])
    if flipped:
        boxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=1)
    return boxes


def merge_detections(detections: list[dict], original_size: tuple[int, int], nms_thresh: float,
                     detections_per_image: int) -> dict:
    """Detections of all views (boxes already on the original image) -> per-class NMS, top k."""
    boxes = clip_boxes_to_image(torch.cat([d["boxes"] for d in detections]), original_size)
    scores = torch.cat([d["scores"] for d in detections])
    classes = torch.cat([d["classes"] for d in detections])
    keep = batched_nms(boxes, scores, classes, nms_thresh)[:detections_per_image]
    return {"boxes": boxes[keep], "scores": scores[keep], "classes": classes[keep]}


class GeneralizedRCNNWithTTA(nn.Module):
    """Wraps a ``GeneralizedRCNN`` for inputs made by ``ifr.data.mapper.TTADatasetMapper``:
    ``[{"height", "width", "views": [{"image", "flip"}, ...]}, ...]`` -> ``[{"instances": ...}]`` at
    the original size, like the model's own inference."""

    def __init__(self, model: GeneralizedRCNN, nms_thresh: float = 0.5, detections_per_image: int = 100):
        super().__init__()
        self.model = model
        self.nms_thresh, self.detections_per_image = nms_thresh, detections_per_image

    def forward(self, batched_inputs: list[dict]) -> list[dict]:
        if self.model.training:
            raise RuntimeError("test-time augmentation is for inference: call .eval() first")
        return [{"instances": self.inference_one(x)} for x in batched_inputs]

    def _view_features(self, view: dict):
        images, sizes = self.model.preprocess_image([view])
        return self.model.backbone(images), sizes

    @torch.no_grad()
    def inference_one(self, inputs: dict) -> dict:
        original = (inputs["height"], inputs["width"])
        heads = self.model.roi_heads
        per_view, view_sizes = [], []
        for view in inputs["views"]:
            features, sizes = self._view_features(view)
            proposals, _ = self.model.proposal_generator(features, sizes)
            detections = heads.box_inference(features, [p["boxes"] for p in proposals], sizes)[0]
            detections["boxes"] = view_to_original(detections["boxes"], sizes[0], original, view["flip"])
            per_view.append(detections)
            view_sizes.append(sizes[0])
        merged = merge_detections(per_view, original, self.nms_thresh, self.detections_per_image)
        if getattr(heads, "mask_on", False):
            probabilities = []
            # Features are recomputed rather than kept: all views' pyramids at once would not fit
            # in memory at COCO's TTA sizes.
            for view, size in zip(inputs["views"], view_sizes):
                features, _ = self._view_features(view)
                boxes = clip_boxes_to_image(original_to_view(merged["boxes"], size, original, view["flip"]), size)
                in_view = {"boxes": boxes, "classes": merged["classes"]}
                heads.predict_masks(features, [in_view])
                masks = in_view["masks"]
                probabilities.append(masks.flip(-1) if view["flip"] else masks)
            merged["masks"] = torch.stack(probabilities).mean(dim=0)
        return detector_postprocess(merged, original, original)


def build_tta_model(cfg, model: GeneralizedRCNN) -> GeneralizedRCNNWithTTA | None:
    """The TTA wrapper of TEST.AUG (None when disabled); its settings are checked either way."""
    aug = cfg.TEST.AUG
    sizes = list(aug.MIN_SIZES)
    if not sizes or not all(isinstance(s, int) and s > 0 for s in sizes) or aug.MAX_SIZE < max(sizes, default=1):
        raise ConfigError(f"TEST.AUG.MIN_SIZES must be positive short edges, at most TEST.AUG.MAX_SIZE "
                          f"({aug.MAX_SIZE}); got {aug.MIN_SIZES}")
    if aug.FLIP is not True and aug.FLIP is not False:
        raise ConfigError(f"TEST.AUG.FLIP must be True or False, got {aug.FLIP!r}")
    if not aug.ENABLED:
        return None
    return GeneralizedRCNNWithTTA(model, cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST, cfg.TEST.DETECTIONS_PER_IMAGE)
