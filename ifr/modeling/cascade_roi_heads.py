"""Cascade R-CNN ROI heads (Cai & Vasconcelos, 2018) with cvpods' conventions.

Stage k has its own 2fc box head, predictor (class-agnostic regression) and box transform weights,
and matches proposals to ground truth at its own IoU threshold. In training, stage 0 samples
proposals (ground truth appended), each later stage takes the previous stage's refined, detached
boxes, all of them, re-labelled at its threshold; each stage's pooled features pass a gradient scale
of 1 / num_stages. At test time the stages' softmax scores are averaged and the last stage's boxes
kept. The mask head sees stage 0's sampled foreground RoIs in training and the final boxes at test.
State-dict names are cvpods': ``box_head.{k}.fc{1,2}``, ``box_predictor.{k}.{cls_score,bbox_pred}``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torchvision.models.detection._utils import Matcher
from torchvision.ops import clip_boxes_to_image

from ifr.config import ConfigError

from .box_head import FastRCNNConvFCHead, FastRCNNOutputLayers, build_box_head, build_box_predictor
from .roi_heads import StandardROIHeads, roi_heads_arguments


class ScaleGradient(torch.autograd.Function):
    """Identity forward; the backward multiplies the incoming gradient by ``scale``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


class CascadeROIHeads(StandardROIHeads):
    def __init__(self, *, box_heads: Sequence[FastRCNNConvFCHead], box_predictors: Sequence[FastRCNNOutputLayers],
                 iou_thresholds: Sequence[float], **kwargs):
        if not len(box_heads) == len(box_predictors) == len(iou_thresholds) >= 1:
            raise ConfigError(f"a cascade needs one box head, predictor and IoU threshold per stage; got "
                              f"{len(box_heads)}, {len(box_predictors)}, {len(iou_thresholds)}")
        super().__init__(box_head=nn.ModuleList(box_heads), box_predictor=nn.ModuleList(box_predictors),
                         iou_threshold=iou_thresholds[0], **kwargs)
        self.num_stages = len(box_heads)
        self.stage_matchers = [Matcher(t, t, allow_low_quality_matches=False) for t in iou_thresholds]

    def stage_outputs(self, stage: int, features, boxes: list[torch.Tensor]):
        pooled = self.box_pooler([features[f] for f in self.box_in_features], boxes)
        if self.training:
            pooled = ScaleGradient.apply(pooled, 1.0 / self.num_stages)
        return self.box_predictor[stage](self.box_head[stage](pooled))

    def refine(self, stage: int, deltas: torch.Tensor, boxes: list[torch.Tensor],
               image_sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
        """Stage ``stage``'s boxes, per image, clipped, detached: the next stage's proposals."""
        refined = self.box_predictor[stage].predict_boxes(deltas.detach(), torch.cat(boxes))
        return [clip_boxes_to_image(b, size) for b, size in zip(refined.split([len(b) for b in boxes]), image_sizes)]

    def box_losses(self, features, sampled: list[dict], targets: list[dict],
                   image_sizes: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
        losses = {}
        stage_rois = sampled
        for stage in range(self.num_stages):
            logits, deltas = self.stage_outputs(stage, features, [r["proposal_boxes"] for r in stage_rois])
            stage_losses = self.box_predictor[stage].losses(
                logits, deltas, *(torch.cat([r[k] for r in stage_rois]) for k in
                                  ("proposal_boxes", "gt_classes", "gt_boxes")))
            losses.update({f"{name}_stage{stage}": value for name, value in stage_losses.items()})
            if stage + 1 < self.num_stages:
                boxes = self.refine(stage, deltas, [r["proposal_boxes"] for r in stage_rois], image_sizes)
                # Training drops boxes this stage collapsed to nothing, as the reference does.
                boxes = [b[(b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])] for b in boxes]
                stage_rois = [self.match_proposals(b, t, self.stage_matchers[stage + 1])
                              for b, t in zip(boxes, targets)]
        return losses

    def box_inference(self, features, proposal_boxes: list[torch.Tensor], image_sizes) -> list[dict]:
        boxes = proposal_boxes
        probs = []
        for stage in range(self.num_stages):
            logits, deltas = self.stage_outputs(stage, features, boxes)
            probs.append(self.box_predictor[stage].predict_probs(logits))
            if stage + 1 < self.num_stages:
                boxes = self.refine(stage, deltas, boxes, image_sizes)
        last = self.box_predictor[-1]
        final_boxes = last.predict_boxes(deltas, torch.cat(boxes))
        mean_probs = sum(probs) * (1.0 / self.num_stages)
        counts = [len(b) for b in boxes]
        return [last.inference(b, p, size) for b, p, size in
                zip(final_boxes.split(counts), mean_probs.split(counts), image_sizes)]


def build_cascade_roi_heads(cfg, in_channels: int, strides: dict[str, int], mask_head: nn.Module | None):
    cascade = cfg.MODEL.ROI_BOX_CASCADE_HEAD
    if not cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG:
        raise ConfigError("cascade ROI heads refine one box per RoI: set MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG True")
    if len(cascade.IOUS) != len(cascade.BBOX_REG_WEIGHTS):
        raise ConfigError("MODEL.ROI_BOX_CASCADE_HEAD.IOUS and BBOX_REG_WEIGHTS need one entry per stage, got "
                          f"{len(cascade.IOUS)} and {len(cascade.BBOX_REG_WEIGHTS)}")
    box_heads = [build_box_head(cfg, in_channels) for _ in cascade.IOUS]
    predictors = [build_box_predictor(cfg, head.output_size, weights)
                  for head, weights in zip(box_heads, cascade.BBOX_REG_WEIGHTS)]
    return CascadeROIHeads(box_heads=box_heads, box_predictors=predictors, iou_thresholds=list(cascade.IOUS),
                           **roi_heads_arguments(cfg, in_channels, strides, mask_head))
