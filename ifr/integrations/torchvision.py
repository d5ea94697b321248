"""IFR as a drop-in head for torchvision's detectors (torch + torchvision and ``ifr.deq`` only): the mask
head of Mask R-CNN here, and, re-exported from their own modules, the keypoint head of Keypoint R-CNN
(``replace_keypoint_head``), the box head of the v2 Faster / Mask R-CNN (``replace_box_head``) and the
towers of RetinaNet v2 and FCOS (``replace_dense_head_towers``); each one call, on ``ifr.deq.RefinementTower``.

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

from torch import nn

from ifr.deq.solvers import CUDA_CHECK_PERIOD
from ifr.deq.tower import check_tower

from .counted_tower import CountedTower, tower_settings
from .torchvision_box_head import BoxRefinementHead, replace_box_head
from .torchvision_dense_heads import LevelTower, replace_dense_head_towers
from .torchvision_keypoints import KeypointRefinementHead, replace_keypoint_head

__all__ = ["BoxRefinementHead", "CountedTower", "KeypointRefinementHead", "LevelTower", "RefinementMaskHead",
           "replace_box_head", "replace_dense_head_towers", "replace_keypoint_head", "replace_mask_head"]

HEADS = ("ifr", "weight_sharing")


class RefinementMaskHead(CountedTower):
    """torchvision's ``roi_heads.mask_head`` as a refinement: (R, C, H, W) pooled RoI features -> the same
    shape, refined by the tower's ``refinement`` (``CountedTower``: counts training calls in ``step``)."""


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
                      num_groups: int = 4, count_steps: bool = True, allow_tf32: bool = False,
                      cuda_check_period: int = CUDA_CHECK_PERIOD, jacobian_weight: float = 0.0,
                      jacobian_frequency: float = 1.0, jacobian_probes: int = 1) -> RefinementMaskHead:
    """Replaces ``model.roi_heads.mask_head`` (in place) with the IFR refinement (``head="ifr"``: the
    weight-normed block, ``num_unrolled`` unrolled steps for the first ``pretrained_steps`` training
    calls, then the fixed point by ``f_solver`` with the ``backward`` gradient) or the weight-sharing
    form (``"weight_sharing"``: the plain block applied ``num_unrolled`` times). The arguments are the
    IFR head's MODEL.ROI_MASK_HEAD settings (PRETRAINED_STEPS, F_SOLVER, ...); ``solver_options`` go to
    both solvers (e.g. ``{"memory": 15}``). Every other module and weight of ``model`` is kept; the
    block keeps the RoI features' width, so it must be the predictor's input width, and ``num_groups``
    must divide it (both checked here, with a ValueError naming the widths). Returns the new head
    (a ``RefinementTower``: with ``jacobian_weight`` > 0, add its ``last_jacobian_loss``, when not None,
    to the losses)."""
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    settings = tower_settings("replace_mask_head", head, pretrained_steps=pretrained_steps, f_solver=f_solver,
                              f_thres=f_thres, f_tol=f_tol, b_solver=b_solver, b_thres=b_thres, b_tol=b_tol,
                              stop_mode=stop_mode, solver_options=solver_options, backward=backward,
                              phantom_steps=phantom_steps, phantom_damping=phantom_damping, allow_tf32=allow_tf32,
                              cuda_check_period=cuda_check_period, jacobian_weight=jacobian_weight,
                              jacobian_frequency=jacobian_frequency, jacobian_probes=jacobian_probes)
    channels, predictor_channels = _mask_head_channels(model)
    if channels != predictor_channels:
        raise ValueError(f"replace_mask_head: the RoI features have {channels} channels (model.backbone.out_channels, "
                         f"what mask_roi_pool pools) but the mask predictor takes {predictor_channels} "
                         "(roi_heads.mask_predictor.conv5_mask.in_channels); the refinement keeps the features' width, "
                         "so first set model.roi_heads.mask_predictor = "
                         f"MaskRCNNPredictor({channels}, 256, num_classes)")
    check_tower(channels, num_unrolled, head, "group", num_groups, "replace_mask_head", "the RoI features'")
    device = next(model.parameters()).device
    new_head = RefinementMaskHead(channels, num_unrolled, head, num_groups=num_groups, count_steps=count_steps,
                                  **settings).to(device)
    model.roi_heads.mask_head = new_head
    return new_head
