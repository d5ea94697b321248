"""Region proposal network (cvpods' StandardRPNHead + RPN), on torchvision's box ops, Matcher and sampler.

Differences from torchvision's RPN that cvpods relies on: proposals are ranked and NMS-ed on raw
logits (not sigmoid probabilities), the post-NMS top-k is per image over all levels, and empty boxes
are the only ones removed (MIN_SIZE 0).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, Matcher
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image

from ifr.config import ConfigError
from ifr.errors import TrainingDivergedError

from .anchor_generator import DefaultAnchorGenerator
from .box_coder import SCALE_CLAMP, Float32BoxCoder



class StandardRPNHead(nn.Module):
    """3x3 conv + ReLU shared by all levels, then 1x1 ``objectness_logits`` (A) and ``anchor_deltas`` (4A)."""

    def __init__(self, in_channels: int, num_anchors: int, box_dim: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, padding=1)
        self.objectness_logits = nn.Conv2d(in_channels, num_anchors, kernel_size=1)
        self.anchor_deltas = nn.Conv2d(in_channels, num_anchors * box_dim, kernel_size=1)
        for layer in (self.conv, self.objectness_logits, self.anchor_deltas):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """[(N, C, H, W)] -> logits [(N, A, H, W)], deltas [(N, 4A, H, W)]."""
        logits, deltas = [], []
        for x in features:
            t = F.relu(self.conv(x))
            logits.append(self.objectness_logits(t))
            deltas.append(self.anchor_deltas(t))
        return logits, deltas


def _flatten_predictions(logits: list[torch.Tensor], deltas: list[torch.Tensor]):
    """Per level: (N, A, H, W) -> (N, H*W*A) and (N, 4A, H, W) -> (N, H*W*A, 4), anchor order of the generator."""
    flat_logits = [x.permute(0, 2, 3, 1).flatten(1) for x in logits]
    flat_deltas = []
    for d in deltas:
        n, _, h, w = d.shape
        flat_deltas.append(d.view(n, -1, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4))
    return flat_logits, flat_deltas


class RPN(nn.Module):
    """Proposals from FPN features, and the RPN losses in training.

    ``forward(features, image_sizes, targets)`` returns ``(proposals, losses)``: per image a dict with
    ``boxes`` (P, 4) and ``objectness_logits`` (P,), sorted by logit; ``losses`` is empty at inference.
    """

    def __init__(self, in_features: Sequence[str], head: StandardRPNHead, anchor_generator: DefaultAnchorGenerator,
                 *, iou_thresholds=(0.3, 0.7), batch_size_per_image: int = 256, positive_fraction: float = 0.5,
                 bbox_reg_weights=(1.0, 1.0, 1.0, 1.0), smooth_l1_beta: float = 0.0, loss_weight: float = 1.0,
                 pre_nms_topk=(2000, 1000), post_nms_topk=(1000, 1000), nms_thresh: float = 0.7,
                 min_size: float = 0.0):
        super().__init__()
        self.in_features = list(in_features)
        self.rpn_head = head
        self.anchor_generator = anchor_generator
        low, high = iou_thresholds
        self.matcher = Matcher(high, low, allow_low_quality_matches=True)
        self.sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.batch_size_per_image = batch_size_per_image
        self.box_coder = Float32BoxCoder(tuple(bbox_reg_weights), bbox_xform_clip=SCALE_CLAMP)
        self.smooth_l1_beta = smooth_l1_beta
        self.loss_weight = loss_weight
        self.pre_nms_topk = {True: pre_nms_topk[0], False: pre_nms_topk[1]}
        self.post_nms_topk = {True: post_nms_topk[0], False: post_nms_topk[1]}
        self.nms_thresh = nms_thresh
        self.min_size = min_size

    def forward(self, features: dict[str, torch.Tensor], image_sizes: list[tuple[int, int]],
                targets: list[dict] | None = None):
        feats = [features[name] for name in self.in_features]
        anchors = self.anchor_generator([f.shape[-2:] for f in feats])
        logits, deltas = _flatten_predictions(*self.rpn_head(feats))
        losses = {}
        if self.training:
            if targets is None:
                raise ValueError("RPN needs targets in training mode")
            losses = self.losses(anchors, logits, deltas, targets)
        with torch.no_grad():
            proposals = self.find_top_proposals(anchors, logits, deltas, image_sizes)
        return proposals, losses

    def _decode(self, anchors: list[torch.Tensor], deltas: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per level: (N, R, 4) proposal boxes from (R, 4) anchors and (N, R, 4) deltas."""
        out = []
        for a, d in zip(anchors, deltas):
            n = d.shape[0]
            boxes = self.box_coder.decode_single(d.reshape(-1, 4), a.repeat(n, 1))
            out.append(boxes.view(n, -1, 4))
        return out

    def find_top_proposals(self, anchors, logits, deltas, image_sizes) -> list[dict]:
        pre_topk = self.pre_nms_topk[self.training]
        post_topk = self.post_nms_topk[self.training]
        boxes_per_level = self._decode(anchors, [d.detach() for d in deltas])
        results = []
        for i, image_size in enumerate(image_sizes):
            boxes, scores, levels = [], [], []
            for level, (level_boxes, level_logits) in enumerate(zip(boxes_per_level, logits)):
                level_logits = level_logits[i].detach()
                k = min(pre_topk, level_logits.numel())
                top_logits, top_idx = level_logits.sort(descending=True)
                boxes.append(level_boxes[i, top_idx[:k]])
                scores.append(top_logits[:k])
                levels.append(torch.full((k,), level, dtype=torch.int64, device=level_logits.device))
            boxes, scores, levels = torch.cat(boxes), torch.cat(scores), torch.cat(levels)
            finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
            if not finite.all():
                if self.training:
                    raise TrainingDivergedError("RPN predicted non-finite boxes or scores: training has diverged "
                                             "(lower SOLVER.OPTIMIZER.BASE_LR or lengthen the warm-up)")
                boxes, scores, levels = boxes[finite], scores[finite], levels[finite]
            boxes = clip_boxes_to_image(boxes, image_size)
            widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
            keep = (widths > self.min_size) & (heights > self.min_size)
            boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
            keep = batched_nms(boxes, scores, levels, self.nms_thresh)[:post_topk]
            results.append({"boxes": boxes[keep], "objectness_logits": scores[keep]})
        return results

    def losses(self, anchors, logits, deltas, targets) -> dict[str, torch.Tensor]:
        all_anchors = torch.cat(anchors)
        labels, matched_boxes = [], []
        for target in targets:
            gt_boxes = target["boxes"]
            if gt_boxes.numel() == 0:
                labels.append(torch.zeros(len(all_anchors), dtype=torch.int64, device=all_anchors.device))
                matched_boxes.append(torch.zeros_like(all_anchors))
                continue
            matched = self.matcher(box_iou(gt_boxes, all_anchors))
            image_labels = (matched >= 0).to(torch.int64)
            image_labels[matched == Matcher.BETWEEN_THRESHOLDS] = -1
            labels.append(image_labels)
            matched_boxes.append(gt_boxes[matched.clamp(min=0)])
        positive, negative = self.sampler(labels)
        pos = torch.stack(positive).bool()
        valid = pos | torch.stack(negative).bool()
        normalizer = self.batch_size_per_image * len(targets)

        pred_logits = torch.cat(logits, dim=1)
        objectness = F.binary_cross_entropy_with_logits(pred_logits[valid], pos[valid].to(pred_logits.dtype),
                                                        reduction="sum")
        pred_deltas = torch.cat(deltas, dim=1)
        gt_deltas = torch.stack([self.box_coder.encode_single(b, all_anchors) for b in matched_boxes])
        # beta = 0 (the cvpods default) makes this the L1 loss.
        localization = F.smooth_l1_loss(pred_deltas[pos], gt_deltas[pos], beta=self.smooth_l1_beta,
                                        reduction="sum")
        return {"loss_rpn_cls": objectness * self.loss_weight / normalizer,
                "loss_rpn_loc": localization * self.loss_weight / normalizer}


def build_rpn(cfg, in_channels: int, strides: dict[str, int]) -> RPN:
    rpn, anchors = cfg.MODEL.RPN, cfg.MODEL.ANCHOR_GENERATOR
    generator = DefaultAnchorGenerator(anchors.SIZES, anchors.ASPECT_RATIOS,
                                       [strides[name] for name in rpn.IN_FEATURES], anchors.OFFSET)
    counts = set(generator.num_anchors_per_location)
    if len(counts) != 1:
        raise ConfigError("every RPN level must have the same number of anchors per location (one shared head)")
    return RPN(rpn.IN_FEATURES, StandardRPNHead(in_channels, counts.pop()), generator,
               iou_thresholds=tuple(rpn.IOU_THRESHOLDS), batch_size_per_image=rpn.BATCH_SIZE_PER_IMAGE,
               positive_fraction=rpn.POSITIVE_FRACTION, bbox_reg_weights=rpn.BBOX_REG_WEIGHTS,
               smooth_l1_beta=rpn.SMOOTH_L1_BETA, loss_weight=rpn.LOSS_WEIGHT,
               pre_nms_topk=(rpn.PRE_NMS_TOPK_TRAIN, rpn.PRE_NMS_TOPK_TEST),
               post_nms_topk=(rpn.POST_NMS_TOPK_TRAIN, rpn.POST_NMS_TOPK_TEST), nms_thresh=rpn.NMS_THRESH,
               min_size=cfg.MODEL.PROPOSAL_GENERATOR.MIN_SIZE)
