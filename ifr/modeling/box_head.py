"""Fast R-CNN box head (``fc1``, ``fc2``) and predictor (``cls_score``, ``bbox_pred``), losses and inference.

Class layout follows cvpods: ``cls_score`` has K + 1 rows with background LAST (index K);
``bbox_pred`` has 4K rows (class-specific, no background slot) or 4 (class-agnostic).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms, clip_boxes_to_image

from ifr.config import ConfigError

from .box_coder import SCALE_CLAMP, Float32BoxCoder
from .layers import Conv3x3NormReLU


class FastRCNNConvFCHead(nn.Module):
    """cvpods' box head: ``num_conv`` x (3x3 conv [+ norm] + ReLU) on the pooled (R, C, S, S)
    features (``conv1`` ...), then ``num_fc`` fully connected layers with ReLU (``fc1`` ...).
    The R50-FPN experiments use 0 convs and 2 fcs of 1024; "4conv1fc" is 4 convs of 256, 1 fc."""

    def __init__(self, in_channels: int, resolution: int, num_conv: int = 0, conv_dim: int = 256,
                 num_fc: int = 2, fc_dim: int = 1024, norm: str = ""):
        super().__init__()
        if num_conv < 0 or num_fc < 0 or num_conv + num_fc == 0:
            raise ConfigError(f"MODEL.ROI_BOX_HEAD needs NUM_CONV + NUM_FC > 0 (both >= 0), got {num_conv} and {num_fc}")
        self.conv_names, self.fc_names = [], []
        channels = in_channels
        for i in range(num_conv):
            self.add_module(f"conv{i + 1}", Conv3x3NormReLU(channels, conv_dim, norm, "MODEL.ROI_BOX_HEAD.NORM"))
            self.conv_names.append(f"conv{i + 1}")
            channels = conv_dim
        size = channels * resolution ** 2
        for i in range(num_fc):
            fc = nn.Linear(size, fc_dim)
            nn.init.kaiming_uniform_(fc.weight, a=1)  # Caffe2's XavierFill
            nn.init.zeros_(fc.bias)
            self.add_module(f"fc{i + 1}", fc)
            self.fc_names.append(f"fc{i + 1}")
            size = fc_dim
        self.output_size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.conv_names:
            x = getattr(self, name)(x)
        x = x.flatten(1)
        for name in self.fc_names:
            x = F.relu(getattr(self, name)(x))
        return x


class FastRCNNOutputLayers(nn.Module):
    """Classification (K + 1, background last) and box regression from box-head features."""

    def __init__(self, input_size: int, num_classes: int, box_coder: Float32BoxCoder, *,
                 cls_agnostic_bbox_reg: bool = False, smooth_l1_beta: float = 0.0, score_thresh: float = 0.05, nms_thresh: float = 0.5,
                 detections_per_image: int = 100):
        super().__init__()
        self.num_classes = num_classes
        self.cls_score = nn.Linear(input_size, num_classes + 1)
        self.bbox_pred = nn.Linear(input_size, 4 if cls_agnostic_bbox_reg else 4 * num_classes)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)
        self.box_coder = box_coder
        self.cls_agnostic_bbox_reg = cls_agnostic_bbox_reg
        self.smooth_l1_beta = smooth_l1_beta
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_image = detections_per_image

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(R, D) -> class logits (R, K + 1), box deltas (R, 4K or 4)."""
        return self.cls_score(x), self.bbox_pred(x)

    def losses(self, logits: torch.Tensor, deltas: torch.Tensor, proposal_boxes: torch.Tensor,
               gt_classes: torch.Tensor, gt_boxes: torch.Tensor) -> dict[str, torch.Tensor]:
        """Softmax cross-entropy over all sampled RoIs; smooth-L1 on the foreground RoIs' deltas of
        their ground-truth class, summed and divided by the number of sampled RoIs."""
        loss_cls = F.cross_entropy(logits, gt_classes, reduction="mean")
        fg = torch.nonzero((gt_classes >= 0) & (gt_classes < self.num_classes)).squeeze(1)
        if self.cls_agnostic_bbox_reg:
            fg_deltas = deltas[fg]
        else:
            fg_deltas = deltas.view(len(deltas), -1, 4)[fg, gt_classes[fg]]
        target = self.box_coder.encode_single(gt_boxes[fg], proposal_boxes[fg])
        loss_box = F.smooth_l1_loss(fg_deltas, target, beta=self.smooth_l1_beta, reduction="sum")
        return {"loss_cls": loss_cls, "loss_box_reg": loss_box / max(gt_classes.numel(), 1)}

    def predict_boxes(self, deltas: torch.Tensor, proposal_boxes: torch.Tensor) -> torch.Tensor:
        """(R, 4K or 4) deltas on (R, 4) proposals -> (R, 4K or 4) decoded boxes."""
        if len(proposal_boxes) == 0:
            return deltas.new_zeros(deltas.shape)
        return self.box_coder.decode_single(deltas, proposal_boxes).reshape(len(deltas), -1)

    def predict_probs(self, logits: torch.Tensor) -> torch.Tensor:
        return F.softmax(logits, dim=-1)

    def inference(self, boxes: torch.Tensor, probs: torch.Tensor, image_size: tuple[int, int]) -> dict:
        """Per image: (R, 4K or 4) boxes, (R, K + 1) probabilities -> detections after score filter,
        per-class NMS and top-k (cvpods' ``fast_rcnn_inference_single_image``)."""
        scores = probs[:, :-1]
        num_boxes = boxes.shape[1] // 4
        boxes = clip_boxes_to_image(boxes.reshape(-1, 4), image_size).view(-1, num_boxes, 4)
        keep_mask = scores > self.score_thresh
        index = torch.nonzero(keep_mask)
        if num_boxes == 1:
            kept_boxes = boxes[index[:, 0], 0]
        else:
            kept_boxes = boxes[index[:, 0], index[:, 1]]
        kept_scores = scores[keep_mask]
        keep = batched_nms(kept_boxes, kept_scores, index[:, 1], self.nms_thresh)[: self.detections_per_image]
        return {"boxes": kept_boxes[keep], "scores": kept_scores[keep], "classes": index[keep, 1]}


def build_box_head(cfg, in_channels: int) -> FastRCNNConvFCHead:
    head = cfg.MODEL.ROI_BOX_HEAD
    return FastRCNNConvFCHead(in_channels, head.POOLER_RESOLUTION, head.NUM_CONV, head.CONV_DIM, head.NUM_FC,
                              head.FC_DIM, head.NORM)


def build_box_predictor(cfg, input_size: int, bbox_reg_weights=None) -> FastRCNNOutputLayers:
    head = cfg.MODEL.ROI_BOX_HEAD
    weights = tuple(bbox_reg_weights if bbox_reg_weights is not None else head.BBOX_REG_WEIGHTS)
    return FastRCNNOutputLayers(
        input_size, cfg.MODEL.ROI_HEADS.NUM_CLASSES, Float32BoxCoder(weights, bbox_xform_clip=SCALE_CLAMP),
        cls_agnostic_bbox_reg=head.CLS_AGNOSTIC_BBOX_REG, smooth_l1_beta=head.SMOOTH_L1_BETA,
        score_thresh=cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST, nms_thresh=cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST,
        detections_per_image=cfg.TEST.DETECTIONS_PER_IMAGE)
