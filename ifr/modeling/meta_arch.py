"""GeneralizedRCNN: backbone -> proposal generator -> ROI heads, with cvpods' input conventions.

Inputs are a list of per-image dicts (what the dataset mappers produce):
    ``image``: (3, H, W) uint8 tensor in the config's INPUT.FORMAT (BGR by default, 0-255);
    ``height``, ``width``: the original image size that detections are reported at (inference);
    ``instances`` (training): dict with ``boxes`` (G, 4), ``classes`` (G,), ``masks`` (G, H, W) bool.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .postprocessing import detector_postprocess


class GeneralizedRCNN(nn.Module):
    def __init__(self, backbone: nn.Module, proposal_generator: nn.Module, roi_heads: nn.Module, *,
                 pixel_mean: Sequence[float], pixel_std: Sequence[float], input_format: str = "BGR",
                 size_divisibility: int = 32):
        super().__init__()
        # The channel order images arrive in (the mapper produces it); weights are tied to one.
        self.input_format = input_format
        self.backbone = backbone
        self.proposal_generator = proposal_generator
        self.roi_heads = roi_heads
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)
        self.size_divisibility = size_divisibility

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: list[dict]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Normalises each image and zero-pads the batch (bottom/right) to a multiple of size_divisibility."""
        images = [(x["image"].to(self.device, non_blocking=True).float() - self.pixel_mean) / self.pixel_std
                  for x in batched_inputs]
        sizes = [tuple(img.shape[-2:]) for img in images]
        div = self.size_divisibility
        max_h = -(-max(h for h, _ in sizes) // div) * div
        max_w = -(-max(w for _, w in sizes) // div) * div
        batch = torch.stack([F.pad(img, (0, max_w - img.shape[2], 0, max_h - img.shape[1])) for img in images])
        return batch, sizes

    def forward(self, batched_inputs: list[dict], iteration: int | None = None):
        """Training: a dict of losses (``iteration`` is the global 0-based training iteration, handed
        to the mask head). Inference: ``self.inference(batched_inputs)``."""
        if not self.training:
            return self.inference(batched_inputs)
        images, image_sizes = self.preprocess_image(batched_inputs)
        targets = [{k: v.to(self.device, non_blocking=True) for k, v in x["instances"].items()} for x in batched_inputs]
        features = self.backbone(images)
        proposals, losses = self.proposal_generator(features, image_sizes, targets)
        _, detector_losses = self.roi_heads(features, proposals, image_sizes, targets, iteration=iteration)
        losses.update(detector_losses)
        return losses

    @torch.no_grad()
    def inference(self, batched_inputs: list[dict], do_postprocess: bool = True) -> list[dict]:
        """Per image ``{"instances": detections}`` at the original ``height`` x ``width`` (or at the
        network-input size with ``do_postprocess=False``)."""
        images, image_sizes = self.preprocess_image(batched_inputs)
        features = self.backbone(images)
        proposals, _ = self.proposal_generator(features, image_sizes)
        detections, _ = self.roi_heads(features, proposals, image_sizes)
        if not do_postprocess:
            return [{"instances": d} for d in detections]
        return [{"instances": detector_postprocess(d, size, (x.get("height", size[0]), x.get("width", size[1])))}
                for d, size, x in zip(detections, image_sizes, batched_inputs)]
