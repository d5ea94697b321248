"""IFR as a drop-in mask head for torchvision's Mask R-CNN (torch + torchvision and ``ifr.deq`` only).

torchvision's ``RoIHeads`` maps pooled RoI features (R, C, 14, 14) through ``roi_heads.mask_head`` to
refined features and ``roi_heads.mask_predictor`` to mask logits. ``replace_mask_head`` swaps the
mask head (4 convolutions) for the IFR refinement or its weight-sharing form and keeps the predictor::

    model = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=...)
    replace_mask_head(model, head="ifr", pretrained_steps=1000)
    loss_dict = model(images, targets)            # torchvision's training conventions, unchanged

torchvision does not tell its heads the training iteration, so ``RefinementMaskHead`` counts its own:
``step`` (a buffer, saved in the state dict) advances by one at every training-mode call; with
``count_steps=False`` the user sets it (``head.step.fill_(iteration)``) instead, e.g. to count
optimizer steps under gradient accumulation. The IFR schedule uses the unrolled form while
``step < pretrained_steps`` and the implicit fixed point afterwards and at inference.
"""
from __future__ import annotations

import torch
from torch import nn

from ifr.deq import EquilibriumRefinement, IFRBlock, ImplicitBackward, PhantomBackward, SolverConfig

HEADS = ("ifr", "weight_sharing")
BACKWARDS = ("implicit", "phantom")


class RefinementMaskHead(nn.Module):
    """(R, C, H, W) pooled RoI features -> the same shape, refined by ``refinement``; counts training
    calls in ``step`` (see the module docstring) and hands it to the IFR schedule."""

    def __init__(self, refinement: EquilibriumRefinement, count_steps: bool = True):
        super().__init__()
        self.refinement = refinement
        self.count_steps = count_steps
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.refinement(features)
        out = self.refinement(features, iteration=int(self.step))
        if self.count_steps:
            self.step += 1
        return out

    @property
    def mode(self) -> str:
        """The mode the next training call uses: "unrolled" or "implicit"."""
        return self.refinement.resolve_mode(int(self.step)) if self.training else self.refinement.resolve_mode(None)

    def solver_stats(self) -> dict[str, float]:
        """Scalars of the last forward and backward solves for logging (empty after an unrolled call):
        ``forward_iterations``, ``forward_rel_residual``, ``forward_diverged``, ``backward_*``."""
        stats = {}
        solves = {"forward": self.refinement.last_stats,
                  "backward": getattr(self.refinement.backward_strategy, "last_stats", None)}
        for kind, record in solves.items():
            if record is not None:
                stats.update({f"{kind}_{k}": v for k, v in record.summary().items()})
        return stats


def _mask_head_channels(model: nn.Module) -> tuple[int, int]:
    """(the RoI features' width, the mask predictor's input width) of a torchvision MaskRCNN."""
    predictor = getattr(getattr(model, "roi_heads", None), "mask_predictor", None)
    deconv = getattr(predictor, "conv5_mask", None)
    roi_channels = getattr(getattr(model, "backbone", None), "out_channels", None)
    if not isinstance(deconv, nn.ConvTranspose2d) or not isinstance(roi_channels, int):
        raise TypeError("replace_mask_head needs a torchvision MaskRCNN (model.backbone.out_channels and "
                        f"model.roi_heads.mask_predictor.conv5_mask); got {type(model).__name__}")
    return roi_channels, deconv.in_channels


def replace_mask_head(model: nn.Module, head: str = "ifr", *, pretrained_steps: int = 0, num_unrolled: int = 4,
                      f_solver: str = "broyden", f_thres: int = 15, f_tol: float = 1e-4, b_solver: str = "broyden",
                      b_thres: int = 15, b_tol: float = 1e-4, stop_mode: str = "rel", solver_options: dict | None = None,
                      backward: str = "implicit", phantom_steps: int = 1, phantom_damping: float = 1.0,
                      num_groups: int = 4, count_steps: bool = True) -> RefinementMaskHead:
    """Replaces ``model.roi_heads.mask_head`` (in place) with the IFR refinement (``head="ifr"``: the
    weight-normed block, ``num_unrolled`` unrolled steps for the first ``pretrained_steps`` training
    calls, then the fixed point by ``f_solver`` with the ``backward`` gradient) or the weight-sharing
    form (``"weight_sharing"``: the plain block applied ``num_unrolled`` times). The arguments are the
    IFR head's MODEL.ROI_MASK_HEAD settings (PRETRAINED_STEPS, F_SOLVER, ...); ``solver_options`` go to
    both solvers (e.g. ``{"memory": 15}``). Every other module and weight of ``model`` is kept; the
    block keeps the RoI features' width, so it must be the predictor's input width, and ``num_groups``
    must divide it (both checked here, with a ValueError naming the widths). Returns the new head."""
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    if backward not in BACKWARDS:
        raise ValueError(f"backward must be one of {BACKWARDS}, got {backward!r}")
    channels, predictor_channels = _mask_head_channels(model)
    if channels != predictor_channels:
        raise ValueError(f"replace_mask_head: the RoI features have {channels} channels (model.backbone.out_channels, "
                         f"what mask_roi_pool pools) but the mask predictor takes {predictor_channels} "
                         "(roi_heads.mask_predictor.conv5_mask.in_channels); the refinement keeps the features' width, "
                         "so first set model.roi_heads.mask_predictor = "
                         f"MaskRCNNPredictor({channels}, 256, num_classes)")
    if num_groups < 1 or channels % num_groups:
        raise ValueError(f"replace_mask_head: num_groups={num_groups} must be a positive divisor of the RoI features' "
                         f"{channels} channels (the block's GroupNorms split them into num_groups groups)")
    if head == "weight_sharing":
        refinement = EquilibriumRefinement(IFRBlock(channels, num_groups, weight_norm=False), mode="unrolled",
                                           num_unrolled=num_unrolled)
    else:
        options = dict(solver_options or {})
        gradient = (ImplicitBackward(SolverConfig(b_solver, b_thres, b_tol, stop_mode, options))
                    if backward == "implicit" else PhantomBackward(phantom_steps, phantom_damping))
        refinement = EquilibriumRefinement(IFRBlock(channels, num_groups, weight_norm=True), mode="scheduled",
                                           num_unrolled=num_unrolled, pretrained_steps=pretrained_steps,
                                           solver=SolverConfig(f_solver, f_thres, f_tol, stop_mode, options),
                                           backward=gradient)
    device = next(model.parameters()).device
    new_head = RefinementMaskHead(refinement, count_steps).to(device)
    model.roi_heads.mask_head = new_head
    return new_head
