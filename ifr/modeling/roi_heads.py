"""StandardROIHeads: proposal sampling, the box branch and the mask branch (cvpods semantics).

Per-image data are plain dicts of tensors:
    targets: ``boxes`` (G, 4) XYXY in input-image pixels, ``classes`` (G,) contiguous ids,
             ``masks`` (G, H, W) bool at the input image's size.
    proposals: ``boxes`` (P, 4), ``objectness_logits`` (P,).
    detections: ``boxes`` (D, 4), ``scores`` (D,), ``classes`` (D,), ``masks`` (D, 1, M, M) probabilities.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, Matcher
from torchvision.ops import box_iou, roi_align

from ifr.config import ConfigError

from .box_head import FastRCNNConvFCHead, FastRCNNOutputLayers, build_box_head, build_box_predictor
from .mask_head import mask_rcnn_inference, mask_rcnn_loss
from .poolers import ROIPooler


def crop_and_resize_masks(masks: torch.Tensor, boxes: torch.Tensor, mask_index: torch.Tensor,
                          mask_size: int) -> torch.Tensor:
    """Mask targets: (G, H, W) bool full-image masks, (R, 4) boxes and (R,) the mask of each box ->
    (R, M, M) bool, the mask inside each box (RoIAlign with the half-pixel correction, thresholded
    at 0.5, as detectron2's BitMasks do). Each mask is stored once, however many boxes use it."""
    if len(boxes) == 0:
        return masks.new_zeros((0, mask_size, mask_size), dtype=torch.bool)
    rois = torch.cat([mask_index.to(boxes.dtype)[:, None], boxes], dim=1)
    crops = roi_align(masks[:, None].to(boxes.dtype), rois, mask_size, spatial_scale=1.0, sampling_ratio=0,
                      aligned=True)
    return crops[:, 0] >= 0.5


class StandardROIHeads(nn.Module):
    """Box head on ``box_in_features``; optional mask head on the foreground RoIs (training) or on the
    final detections (inference). ``forward(features, proposals, targets, iteration)`` returns
    ``(detections, losses)``; the training iteration is handed to the mask head."""

    def __init__(self, *, num_classes: int, box_in_features: Sequence[str], box_pooler: ROIPooler,
                 box_head: FastRCNNConvFCHead, box_predictor: FastRCNNOutputLayers,
                 mask_in_features: Sequence[str] | None = None, mask_pooler: ROIPooler | None = None,
                 mask_head: nn.Module | None = None, iou_threshold: float = 0.5,
                 batch_size_per_image: int = 512, positive_fraction: float = 0.25,
                 proposal_append_gt: bool = True):
        super().__init__()
        self.num_classes = num_classes
        self.box_in_features = list(box_in_features)
        self.box_pooler = box_pooler
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.mask_on = mask_head is not None
        if self.mask_on:
            self.mask_in_features = list(mask_in_features)
            self.mask_pooler = mask_pooler
            self.mask_head = mask_head
        self.proposal_matcher = Matcher(iou_threshold, iou_threshold, allow_low_quality_matches=False)
        self.sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.proposal_append_gt = proposal_append_gt

    # -- training-time sampling ------------------------------------------------------------------
    def match_proposals(self, proposal_boxes: torch.Tensor, target: dict, matcher: Matcher) -> dict:
        """Matches one image's proposals to its ground truth: gt class (background = K) and gt box."""
        gt_boxes = target["boxes"]
        if gt_boxes.numel() == 0:
            matched = torch.full((len(proposal_boxes),), -1, dtype=torch.int64, device=proposal_boxes.device)
            gt_classes = torch.full_like(matched, self.num_classes)
            return {"proposal_boxes": proposal_boxes, "gt_classes": gt_classes,
                    "gt_boxes": torch.zeros_like(proposal_boxes), "gt_index": matched}
        matched = matcher(box_iou(gt_boxes, proposal_boxes))
        gt_classes = target["classes"][matched.clamp(min=0)].clone()
        gt_classes[matched < 0] = self.num_classes
        return {"proposal_boxes": proposal_boxes, "gt_classes": gt_classes,
                "gt_boxes": gt_boxes[matched.clamp(min=0)], "gt_index": matched}

    def label_and_sample_proposals(self, proposals: list[dict], targets: list[dict]) -> list[dict]:
        sampled = []
        for proposal, target in zip(proposals, targets):
            boxes = proposal["boxes"]
            if self.proposal_append_gt:
                # float32 both (proposals are decoded in float32; a ground-truth file may give float64)
                boxes = torch.cat([boxes.float(), target["boxes"].float()])
            sampled.append(self.match_proposals(boxes, target, self.proposal_matcher))
        fg_labels = [(s["gt_classes"] != self.num_classes).to(torch.int64) for s in sampled]
        positive, negative = self.sampler(fg_labels)
        return [{k: v[(pos | neg).bool()] for k, v in s.items()} for s, pos, neg in zip(sampled, positive, negative)]

    # -- branches --------------------------------------------------------------------------------
    def forward(self, features: dict[str, torch.Tensor], proposals: list[dict], image_sizes: list[tuple[int, int]],
                targets: list[dict] | None = None, iteration: int | None = None):
        if self.training:
            if targets is None:
                raise ValueError("ROI heads need targets in training mode")
            sampled = self.label_and_sample_proposals(proposals, targets)
            losses = self.box_losses(features, sampled, targets, image_sizes)
            if self.mask_on:
                losses.update(self.mask_losses(features, sampled, targets, iteration))
            return [], losses
        detections = self.box_inference(features, [p["boxes"] for p in proposals], image_sizes)
        if self.mask_on:
            self.predict_masks(features, detections)
        return detections, {}

    def box_features(self, features: dict[str, torch.Tensor], boxes: list[torch.Tensor]) -> torch.Tensor:
        return self.box_head(self.box_pooler([features[f] for f in self.box_in_features], boxes))

    def box_losses(self, features, sampled: list[dict], targets: list[dict],
                   image_sizes: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
        logits, deltas = self.box_predictor(self.box_features(features, [s["proposal_boxes"] for s in sampled]))
        return self.box_predictor.losses(logits, deltas, *(torch.cat([s[k] for s in sampled]) for k in
                                                           ("proposal_boxes", "gt_classes", "gt_boxes")))

    def box_inference(self, features, proposal_boxes: list[torch.Tensor], image_sizes) -> list[dict]:
        logits, deltas = self.box_predictor(self.box_features(features, proposal_boxes))
        boxes = self.box_predictor.predict_boxes(deltas, torch.cat(proposal_boxes))
        probs = self.box_predictor.predict_probs(logits)
        counts = [len(b) for b in proposal_boxes]
        return [self.box_predictor.inference(b, p, size) for b, p, size in
                zip(boxes.split(counts), probs.split(counts), image_sizes)]

    def mask_losses(self, features, sampled: list[dict], targets: list[dict],
                    iteration: int | None) -> dict[str, torch.Tensor]:
        foreground = [s["gt_classes"] != self.num_classes for s in sampled]
        boxes = [s["proposal_boxes"][fg] for s, fg in zip(sampled, foreground)]
        pooled = self.mask_pooler([features[f] for f in self.mask_in_features], boxes)
        logits = self.mask_head(pooled, iteration=iteration)
        mask_size = logits.shape[-1]
        gt_masks = torch.cat([crop_and_resize_masks(t["masks"], b, s["gt_index"][fg], mask_size)
                              for t, s, fg, b in zip(targets, sampled, foreground, boxes)])
        gt_classes = torch.cat([s["gt_classes"][fg] for s, fg in zip(sampled, foreground)])
        losses = {"loss_mask": mask_rcnn_loss(logits, gt_classes, gt_masks)}
        jacobian = getattr(self.mask_head, "last_jacobian_loss", None)
        if jacobian is not None:  # the IFR head's Jacobian regularisation, on the iterations it applies
            losses["loss_jacobian"] = jacobian
        return losses

    def predict_masks(self, features, detections: list[dict]) -> None:
        """Adds ``masks`` (D, 1, M, M) foreground probabilities to each image's detections."""
        pooled = self.mask_pooler([features[f] for f in self.mask_in_features], [d["boxes"] for d in detections])
        size = 2 * self.mask_pooler.output_size  # the heads upsample 2x
        # One head call per image: the IFR head solves an image's detections together, as cvpods does.
        for d, x in zip(detections, pooled.split([len(d["boxes"]) for d in detections])):
            d["masks"] = mask_rcnn_inference(self.mask_head(x), d["classes"]) if len(x) else \
                x.new_zeros((0, 1, size, size))


def roi_heads_arguments(cfg, in_channels: int, strides: dict[str, int], mask_head: nn.Module | None) -> dict:
    """Constructor arguments every ROI-heads variant shares: classes, sampling, poolers, the mask branch."""
    heads = cfg.MODEL.ROI_HEADS
    box = cfg.MODEL.ROI_BOX_HEAD
    level_strides = [strides[f] for f in heads.IN_FEATURES]
    arguments = dict(num_classes=heads.NUM_CLASSES, box_in_features=heads.IN_FEATURES,
                     box_pooler=ROIPooler(box.POOLER_RESOLUTION, level_strides, box.POOLER_SAMPLING_RATIO,
                                          box.POOLER_TYPE),
                     batch_size_per_image=heads.BATCH_SIZE_PER_IMAGE, positive_fraction=heads.POSITIVE_FRACTION,
                     proposal_append_gt=heads.PROPOSAL_APPEND_GT)
    if mask_head is not None:
        mask = cfg.MODEL.ROI_MASK_HEAD
        arguments.update(mask_in_features=heads.IN_FEATURES, mask_head=mask_head,
                         mask_pooler=ROIPooler(mask.POOLER_RESOLUTION, level_strides, mask.POOLER_SAMPLING_RATIO,
                                               mask.POOLER_TYPE))
    return arguments


def build_standard_roi_heads(cfg, in_channels: int, strides: dict[str, int], mask_head: nn.Module | None):
    if len(cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS) != 1:
        raise ConfigError("MODEL.ROI_HEADS.IOU_THRESHOLDS must hold one threshold for StandardROIHeads")
    box_head = build_box_head(cfg, in_channels)
    return StandardROIHeads(box_head=box_head, box_predictor=build_box_predictor(cfg, box_head.output_size),
                            iou_threshold=cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS[0],
                            **roi_heads_arguments(cfg, in_channels, strides, mask_head))
