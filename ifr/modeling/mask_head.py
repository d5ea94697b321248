"""Mask heads: the standard 4-conv head, and the refinement heads (weight-sharing and IFR).

All heads map pooled RoI features (R, C, 14, 14) to per-class mask logits (R, K, 28, 28) (K = 1 when
class-agnostic) through ``features -> deconv (2x2, stride 2) -> ReLU -> 1x1 predictor``; they differ
in how the features are refined, and take the training iteration explicitly (``iteration=None`` at
inference).
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from ifr.config import ConfigError, RCNNFPNConfig
from ifr.config.support import non_default
from ifr.deq import EquilibriumRefinement, IFRBlock, ImplicitBackward, PhantomBackward, RefinementTower, SolverConfig

from .layers import Conv3x3NormReLU, msra_fill

logger = logging.getLogger(__name__)


class _UpsamplePredictor(nn.Module):
    """The part every mask head shares: ``deconv`` + ReLU + ``predictor`` (names as in cvpods), and
    the memory layout the head computes in (``channels_last``: 3x3 convolutions on 14 x 14 RoIs run
    about 1.3x faster on CPU; the IFR head's solver keeps its iterates in that layout)."""

    def __init__(self, conv_dim: int, num_classes: int, cls_agnostic: bool, channels_last: bool = False):
        super().__init__()
        self.channels_last = channels_last
        self.deconv = nn.ConvTranspose2d(conv_dim, conv_dim, kernel_size=2, stride=2)
        self.predictor = nn.Conv2d(conv_dim, 1 if cls_agnostic else num_classes, kernel_size=1)
        msra_fill(self.deconv)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.zeros_(self.predictor.bias)

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        return self.predictor(F.relu(self.deconv(features)))

    def in_layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _store_weights_in_layout(self) -> None:
        """Weights in the layout the head computes in, so their gradients have the weights' strides
        (DDP's gradient buckets expect that; otherwise it warns and copies every step)."""
        if self.channels_last:
            self.to(memory_format=torch.channels_last)


class ConvUpsampleMaskHead(_UpsamplePredictor):
    """Mask R-CNN's head: ``num_conv`` x (3x3 conv [+ norm] + ReLU), parameters ``mask_fcn{i}``."""

    def __init__(self, in_channels: int = 256, conv_dim: int = 256, num_conv: int = 4,
                 num_classes: int = 80, cls_agnostic: bool = False, channels_last: bool = False, norm: str = ""):
        super().__init__(conv_dim if num_conv > 0 else in_channels, num_classes, cls_agnostic, channels_last)
        self.conv_names = []
        for i in range(num_conv):
            conv = Conv3x3NormReLU(in_channels if i == 0 else conv_dim, conv_dim, norm, "MODEL.ROI_MASK_HEAD.NORM")
            self.add_module(f"mask_fcn{i + 1}", conv)
            self.conv_names.append(f"mask_fcn{i + 1}")
        self._store_weights_in_layout()

    def forward(self, x: torch.Tensor, iteration: int | None = None) -> torch.Tensor:
        x = self.in_layout(x)
        for name in self.conv_names:
            x = getattr(self, name)(x)
        return self.predict(x)


class RefinementMaskHead(RefinementTower, _UpsamplePredictor):
    """A head whose features come from a ``RefinementTower`` around an ``EquilibriumRefinement`` of the
    pooled RoI features (the tower that replaces the 4 convs; its ``refinement`` keeps the released
    checkpoints' parameter names ``refinement.block.*``).

    With ``mode="unrolled"`` it is the weight-sharing head (the block applied N times); with
    ``mode="scheduled"`` it is the IFR head (unrolled for the first ``pretrained_steps`` training
    iterations, the implicit fixed point afterwards and at inference). The refinement's forward-solve
    statistics are in ``self.refinement.last_stats``.

    Jacobian regularisation (``jacobian_weight`` > 0, implicit backward only): on a fraction
    ``jacobian_frequency`` of the implicit training iterations (evenly spread, no randomness), the head
    leaves ``jacobian_weight`` x a ``jacobian_probes``-probe estimate of ||J||_F^2 / numel at the
    equilibrium in ``last_jacobian_loss`` (the ROI heads add it to the losses as ``loss_jacobian``);
    otherwise ``last_jacobian_loss`` is None (``RefinementTower``).
    """

    def __init__(self, refinement: EquilibriumRefinement, conv_dim: int = 256, num_classes: int = 80,
                 cls_agnostic: bool = False, channels_last: bool = False, jacobian_weight: float = 0.0,
                 jacobian_frequency: float = 1.0, jacobian_probes: int = 1):
        _UpsamplePredictor.__init__(self, conv_dim, num_classes, cls_agnostic, channels_last)
        # The same conditions the tower checks, named by the config keys that set them.
        if jacobian_weight > 0 and not isinstance(refinement.backward_strategy, ImplicitBackward):
            raise ConfigError("MODEL.ROI_MASK_HEAD.JACOBIAN_WEIGHT > 0 needs BACKWARD implicit (the estimate uses "
                              "the implicit backward's f(z*) graph)")
        if not 0.0 < jacobian_frequency <= 1.0 or jacobian_probes < 1:
            raise ConfigError(f"MODEL.ROI_MASK_HEAD.JACOBIAN_FREQUENCY must be in (0, 1] and JACOBIAN_PROBES >= 1, "
                              f"got {jacobian_frequency} and {jacobian_probes}")
        self.use_refinement(refinement, jacobian_weight, jacobian_frequency, jacobian_probes)
        self._store_weights_in_layout()

    def forward(self, x: torch.Tensor, iteration: int | None = None) -> torch.Tensor:
        return self.predict(super().forward(self.in_layout(x), iteration))


def mask_rcnn_loss(logits: torch.Tensor, gt_classes: torch.Tensor, gt_masks: torch.Tensor) -> torch.Tensor:
    """Per-pixel binary cross-entropy on the ground-truth class's channel, averaged over all pixels.

    Args:
        logits: (R, K, M, M) mask logits (K = 1 for class-agnostic heads).
        gt_classes: (R,) contiguous class ids of the matched ground truth.
        gt_masks: (R, M, M) targets in [0, 1] (the ground-truth masks cropped to the RoIs).
    """
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    index = torch.arange(logits.shape[0], device=logits.device)
    channel = gt_classes if logits.shape[1] > 1 else torch.zeros_like(gt_classes)
    selected = logits[index, channel]
    return F.binary_cross_entropy_with_logits(selected, gt_masks.to(selected.dtype), reduction="mean")


def mask_rcnn_inference(logits: torch.Tensor, pred_classes: torch.Tensor) -> torch.Tensor:
    """(R, K, M, M) logits and (R,) predicted classes -> (R, 1, M, M) foreground probabilities."""
    if logits.shape[1] == 1:
        return logits.sigmoid()
    index = torch.arange(logits.shape[0], device=logits.device)
    return logits[index, pred_classes].unsqueeze(1).sigmoid()


# The ROI_MASK_HEAD keys that configure each fixed-point solver's own options (solver option -> key).
SOLVER_OPTION_KEYS = {
    "broyden": {"memory": "BROYDEN_MEMORY", "divergence_ratio": "DIVERGENCE_RATIO"},
    "anderson": {"memory": "ANDERSON_MEMORY", "damping": "ANDERSON_DAMPING",
                 "regularization": "ANDERSON_REGULARIZATION", "divergence_ratio": "DIVERGENCE_RATIO"},
    "fixed_point": {"divergence_ratio": "DIVERGENCE_RATIO"},
    "broyden_cvpods": {"divergence_ratio": "DIVERGENCE_RATIO"},
}
# Checked when the head is built, not at the first implicit step (possibly PRETRAINED_STEPS in).
_OPTION_RANGES = {"memory": (lambda v: v >= 1, ">= 1"), "damping": (lambda v: 0 < v <= 1, "in (0, 1]"),
                  "regularization": (lambda v: v >= 0, ">= 0"), "divergence_ratio": (lambda v: v > 1, "> 1")}
_SOLVER_KEYS = ("F_SOLVER", "F_THRES", "F_TOL", "STOP_MODE")
_BACKWARD_KEYS = {"implicit": ("B_SOLVER", "B_THRES", "B_TOL"), "phantom": ("PHANTOM_STEPS", "PHANTOM_DAMPING")}
_OPTION_KEYS = tuple(sorted({k for keys in SOLVER_OPTION_KEYS.values() for k in keys.values()}))
_JACOBIAN_KEYS = ("JACOBIAN_WEIGHT", "JACOBIAN_FREQUENCY", "JACOBIAN_PROBES")
_DEVICE_KEYS = ("SOLVE_ALLOW_TF32", "CUDA_CHECK_PERIOD")
_IFR_KEYS = ("PRETRAINED_STEPS", "BACKWARD", *_SOLVER_KEYS, *_OPTION_KEYS, *_JACOBIAN_KEYS, *_DEVICE_KEYS,
             *(k for keys in _BACKWARD_KEYS.values() for k in keys))
_BLOCK_KEYS = ("GN_GROUPS",)


def _warn_unread(head, keys, head_name: str) -> None:
    """One warning per ROI_MASK_HEAD setting changed from its default that ``head_name`` does not read."""
    for key in non_default(head, RCNNFPNConfig().MODEL.ROI_MASK_HEAD, keys, "MODEL.ROI_MASK_HEAD"):
        logger.warning("%s is set but the %r mask head does not read it", key, head_name)


def _solver_config(head, prefix: str) -> SolverConfig:
    """The forward ("F") or adjoint ("B") solver of the ROI_MASK_HEAD settings."""
    name = head[f"{prefix}_SOLVER"]
    options = {option: head[key] for option, key in SOLVER_OPTION_KEYS.get(name, {}).items()}
    for option, value in options.items():
        valid, expected = _OPTION_RANGES[option]
        if not valid(value):
            raise ConfigError(f"MODEL.ROI_MASK_HEAD.{SOLVER_OPTION_KEYS[name][option]} must be {expected}, got {value}")
    if head.CUDA_CHECK_PERIOD < 1:
        raise ConfigError(f"MODEL.ROI_MASK_HEAD.CUDA_CHECK_PERIOD must be >= 1, got {head.CUDA_CHECK_PERIOD}")
    if head[f"{prefix}_THRES"] < 1:  # a solve with no step: no refinement (forward) or no gradient (backward)
        what = "refines nothing (the masks come from the zero initial state)" if prefix == "F" else \
            "gives the block no gradient"
        raise ConfigError(f"MODEL.ROI_MASK_HEAD.{prefix}_THRES {head[f'{prefix}_THRES']}: a solve with no step "
                          f"{what}; set it to at least 1 (the default is "
                          f"{RCNNFPNConfig().MODEL.ROI_MASK_HEAD[f'{prefix}_THRES']})")
    try:
        return SolverConfig(name, max_iter=head[f"{prefix}_THRES"], tol=head[f"{prefix}_TOL"],
                            stop_mode=head.STOP_MODE, options=options, cuda_check_period=head.CUDA_CHECK_PERIOD)
    except ValueError as e:
        raise ConfigError(f"MODEL.ROI_MASK_HEAD.{prefix}_SOLVER: {e}") from None


def _backward(head) -> ImplicitBackward | PhantomBackward:
    if head.BACKWARD == "implicit":
        return ImplicitBackward(_solver_config(head, "B"), allow_tf32=head.SOLVE_ALLOW_TF32)
    if head.BACKWARD == "phantom":
        try:
            return PhantomBackward(head.PHANTOM_STEPS, head.PHANTOM_DAMPING)
        except ValueError as e:
            raise ConfigError(f"MODEL.ROI_MASK_HEAD.PHANTOM_*: {e}") from None
    raise ConfigError(f"MODEL.ROI_MASK_HEAD.BACKWARD must be one of {sorted(_BACKWARD_KEYS)}, got {head.BACKWARD!r}")


def _refinement_block(head, in_channels: int, weight_norm: bool) -> IFRBlock:
    """The IFR block on ``in_channels`` (it refines the RoI features in place: a CONV_DIM set to
    another width is refused)."""
    if head.NORM:
        raise ConfigError(f"MODEL.ROI_MASK_HEAD.NORM {head.NORM!r} applies to the 4-conv head; the refinement block "
                          "has its own GroupNorms (MODEL.ROI_MASK_HEAD.GN_GROUPS): set NORM ''")
    # CONV_DIM is the 4-conv head's width; left at its default it says nothing about the block.
    if head.CONV_DIM != in_channels and head.CONV_DIM != RCNNFPNConfig().MODEL.ROI_MASK_HEAD.CONV_DIM:
        raise ConfigError(f"MODEL.ROI_MASK_HEAD.CONV_DIM {head.CONV_DIM}: the refinement block keeps the RoI features' "
                          f"width, the FPN's {in_channels} channels; set CONV_DIM {in_channels} (or leave it unset)")
    if head.NUM_CONV < 1:
        raise ConfigError(f"MODEL.ROI_MASK_HEAD.NUM_CONV (unrolled steps) must be >= 1, got {head.NUM_CONV}")
    if head.GN_GROUPS < 1 or in_channels % head.GN_GROUPS:
        raise ConfigError(f"MODEL.ROI_MASK_HEAD.GN_GROUPS {head.GN_GROUPS} must divide the {in_channels} channels")
    return IFRBlock(in_channels, num_groups=head.GN_GROUPS, weight_norm=weight_norm)


def _channels_last(cfg) -> bool:
    """The head's memory layout on the device the model runs on: MODEL.DEVICE, or the CPU where a
    CUDA device is configured but none is available (the run falls back to the CPU then)."""
    head = cfg.MODEL.ROI_MASK_HEAD
    on_cpu, on_cuda = head.CHANNELS_LAST, head.CUDA_CHANNELS_LAST
    return on_cuda if cfg.MODEL.DEVICE.startswith("cuda") and torch.cuda.is_available() else on_cpu


def build_conv_mask_head(cfg, in_channels: int = 256) -> ConvUpsampleMaskHead:
    head = cfg.MODEL.ROI_MASK_HEAD
    _warn_unread(head, _BLOCK_KEYS + _IFR_KEYS, "conv")
    return ConvUpsampleMaskHead(in_channels, head.CONV_DIM, head.NUM_CONV, cfg.MODEL.ROI_HEADS.NUM_CLASSES,
                                head.CLS_AGNOSTIC_MASK, _channels_last(cfg), head.NORM)


def build_weight_sharing_mask_head(cfg, in_channels: int = 256) -> RefinementMaskHead:
    """The IFR block without weight norm, applied ROI_MASK_HEAD.NUM_CONV times from z0 = 0."""
    head = cfg.MODEL.ROI_MASK_HEAD
    _warn_unread(head, _IFR_KEYS, "weight_sharing")
    refinement = EquilibriumRefinement(_refinement_block(head, in_channels, weight_norm=False),
                                       mode="unrolled", num_unrolled=head.NUM_CONV)
    return RefinementMaskHead(refinement, in_channels, cfg.MODEL.ROI_HEADS.NUM_CLASSES, head.CLS_AGNOSTIC_MASK,
                              _channels_last(cfg))


def build_ifr_mask_head(cfg, in_channels: int = 256) -> RefinementMaskHead:
    """The IFR head: weight-normed block, NUM_CONV unrolled steps for PRETRAINED_STEPS iterations,
    then the fixed point solved by F_SOLVER with at most F_THRES steps to residual F_TOL; the
    backward is BACKWARD ("implicit": B_SOLVER, B_THRES, B_TOL; "phantom": PHANTOM_STEPS,
    PHANTOM_DAMPING). Unlike the original, which ignores B_THRES and uses F_THRES for the backward
    solve, B_THRES is honoured.
    """
    head = cfg.MODEL.ROI_MASK_HEAD
    solvers = {head.F_SOLVER} | ({head.B_SOLVER} if head.BACKWARD == "implicit" else set())
    read = {k for name in solvers for k in SOLVER_OPTION_KEYS.get(name, {}).values()}
    unread = [k for keys in _BACKWARD_KEYS.values() for k in keys if k not in _BACKWARD_KEYS.get(head.BACKWARD, ())]
    _warn_unread(head, [k for k in _OPTION_KEYS if k not in read] + unread, "ifr")
    refinement = EquilibriumRefinement(_refinement_block(head, in_channels, weight_norm=True),
                                       mode="scheduled", num_unrolled=head.NUM_CONV,
                                       pretrained_steps=head.PRETRAINED_STEPS, solver=_solver_config(head, "F"),
                                       backward=_backward(head), allow_tf32=head.SOLVE_ALLOW_TF32)
    return RefinementMaskHead(refinement, in_channels, cfg.MODEL.ROI_HEADS.NUM_CLASSES, head.CLS_AGNOSTIC_MASK,
                              _channels_last(cfg), head.JACOBIAN_WEIGHT, head.JACOBIAN_FREQUENCY, head.JACOBIAN_PROBES)


MASK_HEADS = {
    "conv": build_conv_mask_head,
    "weight_sharing": build_weight_sharing_mask_head,
    "ifr": build_ifr_mask_head,
}
