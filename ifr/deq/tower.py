"""A stacked convolution tower (N x [conv 3x3, norm, ReLU] at one width) in three interchangeable forms:
the explicit stack, one block applied N times (weight sharing), and that block solved to its fixed point (IFR).

Why the refined forms use IFR's residual block ``IFRBlock`` with GroupNorm whatever the stack's norm:

* The block is IFR's: ``u = z + x; h = relu(n1(conv1(u))); h = n2(conv2(h)); f = n3(relu(h + u))``; the
  injection ``z + x`` re-injects the tower's input at every step, which is what makes the fixed point a
  function of x at all (a map of z alone would forget x).
* No norm (e.g. Keypoint R-CNN's tower) is not an option for the refined forms: with u = z + x passing
  through ``relu(h + u)`` the map has gain about 1 along z, so iterates grow without bound and a fixed
  point need not exist; the last norm ``n3`` is what bounds every iterate.
* BatchNorm's statistics are over the batch, and they would change with every iterate of a solve: the map
  would then depend on the other samples and on the step, the solvers' per-sample stopping and restriction
  to unconverged samples, and the identical-sample sharing, would no longer be exact, and training and
  inference would solve different equations. GroupNorm normalises each sample on its own, so the map is
  the same function at every step and for every batch; see docs/other_heads.md for the box-head
  measurement of GroupNorm against BatchNorm with statistics frozen on the injection.

The explicit form keeps the stack's own norm (``norm``: "group", "batch" or "none"), so it is the tower
being replaced, layer for layer.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ifr.errors import UserError

from .backward import ImplicitBackward, PhantomBackward
from .block import IFRBlock
from .layer import EquilibriumRefinement
from .solvers import SolverConfig

FORMS = ("explicit", "weight_sharing", "ifr")
NORMS = ("group", "batch", "none")


class TowerConfigError(UserError, ValueError):
    """A tower asked for with widths, groups or settings it cannot have."""


def _explicit_layer(channels: int, norm: str, num_groups: int) -> nn.Sequential:
    """conv 3x3 [+ norm] + ReLU at ``channels``; the conv has a bias only without a norm (a norm's shift
    makes it redundant), as in torchvision's ``Conv2dNormActivation``."""
    conv = nn.Conv2d(channels, channels, 3, padding=1, bias=norm == "none")
    layers = [conv]
    if norm == "group":
        layers.append(nn.GroupNorm(num_groups, channels))
    elif norm == "batch":
        layers.append(nn.BatchNorm2d(channels))
    layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def check_tower(channels: int, num_layers: int, form: str, norm: str, num_groups: int, owner: str,
                width_name: str = "the tower's") -> None:
    """The construction checks of a tower, with ``owner`` (the class or call that builds it) and
    ``width_name`` (what the width is, e.g. "the RoI features'") in the messages."""
    if form not in FORMS:
        raise TowerConfigError(f"{owner}: form must be one of {FORMS}, got {form!r}")
    if norm not in NORMS:
        raise TowerConfigError(f"{owner}: norm must be one of {NORMS}, got {norm!r}")
    if num_layers < 1:
        raise TowerConfigError(f"{owner}: num_layers (the stack's depth; the weight-sharing form's steps) must be "
                               f">= 1, got {num_layers}")
    if channels < 1:
        raise TowerConfigError(f"{owner}: channels must be >= 1, got {channels}")
    uses_groups = form != "explicit" or norm == "group"
    if uses_groups and (num_groups < 1 or channels % num_groups):
        raise TowerConfigError(
            f"{owner}: num_groups={num_groups} must be a positive divisor of {width_name} {channels} channels "
            "(its GroupNorms split them into num_groups groups): choose a divisor of the width, e.g. "
            f"{next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)}")


class LevelsBlock(nn.Module):
    """``block`` on feature levels packed side by side: z, x (N, D) with D = sum over levels of
    C * H_l * W_l -> (N, D), each level's slice going through ``block`` in its own (N, C, H_l, W_l) shape.

    The block acts on each level and each sample alone, so a sample of the packed map is one image's
    levels together, and the solvers may treat samples independently as usual.
    """

    def __init__(self, block: nn.Module, levels: list[torch.Tensor]):
        super().__init__()
        self.block = block
        self.shapes = [tuple(x.shape[1:]) for x in levels]
        self.channels_last = [x.dim() == 4 and not x.is_contiguous()
                              and x.is_contiguous(memory_format=torch.channels_last) for x in levels]
        self.sizes = [math.prod(shape) for shape in self.shapes]

    def pack(self, levels: list[torch.Tensor]) -> torch.Tensor:
        """[(N, C, H_l, W_l)] -> (N, D), each level flattened in its memory order."""
        return torch.cat([(x.permute(0, 2, 3, 1) if cl else x).reshape(x.shape[0], size)
                          for x, cl, size in zip(levels, self.channels_last, self.sizes)], dim=1)

    def unpack(self, packed: torch.Tensor) -> list[torch.Tensor]:
        """(N, D) -> [(N, C, H_l, W_l)], in the levels' memory layouts."""
        levels = []
        for flat, (c, h, w), cl in zip(packed.split(self.sizes, dim=1), self.shapes, self.channels_last):
            levels.append(flat.reshape(-1, h, w, c).permute(0, 3, 1, 2) if cl else flat.reshape(-1, c, h, w))
        return levels

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.pack([self.block(zl, xl) for zl, xl in zip(self.unpack(z), self.unpack(x))])


class RefinementTower(nn.Module):
    """(N, C, H, W) -> (N, C, H, W): a tower of ``num_layers`` x [conv 3x3, norm, ReLU] at width C, as
    ``form``:

    * ``"explicit"``: the stack itself (``layers``: ``num_layers`` x ``nn.Sequential(conv, [norm,] ReLU)``;
      ``norm`` "group" (``num_groups`` groups), "batch" or "none"); ``refinement`` is None.
    * ``"weight_sharing"``: one ``IFRBlock(C, num_groups)`` applied ``num_layers`` times from z0 = 0
      (``refinement``: an ``EquilibriumRefinement`` in mode "unrolled").
    * ``"ifr"``: the weight-normed ``IFRBlock`` solved to its fixed point z* = f(z*, x) (``refinement`` in
      mode "scheduled": unrolled ``num_layers`` steps for training iterations < ``pretrained_steps``, the
      fixed point by ``solver`` afterwards and at inference, gradients by ``backward``, convolutions in
      IEEE float32 unless ``allow_tf32``; the solver's ``cuda_check_period`` sets the per-device sync
      policy). These are the mask head's MODEL.ROI_MASK_HEAD settings; see ``EquilibriumRefinement``.

    The refined forms ignore ``norm`` (the module docstring says why their block always has GroupNorms).

    Jacobian regularisation (``jacobian_weight`` > 0, implicit backward only): on a fraction
    ``jacobian_frequency`` of the implicit training iterations (evenly spread, no randomness), the tower
    leaves ``jacobian_weight`` x a ``jacobian_probes``-probe estimate of ||J||_F^2 / numel at the
    equilibrium in ``last_jacobian_loss`` (to be added to the losses); otherwise ``last_jacobian_loss`` is
    None. ``last_stats``-style statistics are those of ``refinement`` (``solver_stats()`` flattens them).

    Forward: ``tower(x, iteration)`` with x (N, C, H, W) (N may be 0) and ``iteration`` the global 0-based
    training iteration (needed in training mode by the "ifr" form's schedule; None at inference).
    """

    def __init__(self, channels: int, num_layers: int = 4, form: str = "ifr", *, norm: str = "group",
                 num_groups: int = 32, pretrained_steps: int = 0, solver: SolverConfig | None = None,
                 backward: ImplicitBackward | PhantomBackward | None = None, allow_tf32: bool = False,
                 share_identical: bool = True, jacobian_weight: float = 0.0, jacobian_frequency: float = 1.0,
                 jacobian_probes: int = 1):
        super().__init__()
        check_tower(channels, num_layers, form, norm, num_groups, type(self).__name__)
        if form == "explicit":
            self.layers = nn.Sequential(*(_explicit_layer(channels, norm, num_groups) for _ in range(num_layers)))
            self.use_refinement(None)
            return
        self.layers = None
        block = IFRBlock(channels, num_groups=num_groups, weight_norm=form == "ifr")
        if form == "weight_sharing":
            refinement = EquilibriumRefinement(block, mode="unrolled", num_unrolled=num_layers)
        else:
            refinement = EquilibriumRefinement(block, mode="scheduled", num_unrolled=num_layers,
                                               pretrained_steps=pretrained_steps, solver=solver, backward=backward,
                                               share_identical=share_identical, allow_tf32=allow_tf32)
        self.use_refinement(refinement, jacobian_weight, jacobian_frequency, jacobian_probes)

    def use_refinement(self, refinement: EquilibriumRefinement | None, jacobian_weight: float = 0.0,
                       jacobian_frequency: float = 1.0, jacobian_probes: int = 1) -> None:
        """Makes ``refinement`` (None: the explicit ``layers``) what the tower computes, with its Jacobian
        regularisation. The constructor calls it; heads built around an ``EquilibriumRefinement`` they
        were given (the mask head's config builders) call it instead of the constructor."""
        if refinement is not None:
            if jacobian_weight > 0 and not isinstance(refinement.backward_strategy, ImplicitBackward):
                raise TowerConfigError(f"{type(self).__name__}: jacobian_weight > 0 needs the implicit backward "
                                       "(the estimate uses its f(z*) graph)")
            if not 0.0 < jacobian_frequency <= 1.0 or jacobian_probes < 1:
                raise TowerConfigError(f"{type(self).__name__}: jacobian_frequency must be in (0, 1] and "
                                       f"jacobian_probes >= 1, got {jacobian_frequency} and {jacobian_probes}")
        self.refinement = refinement
        self.jacobian_weight, self.jacobian_frequency, self.jacobian_probes = \
            jacobian_weight, jacobian_frequency, jacobian_probes
        self.last_jacobian_loss: torch.Tensor | None = None

    @property
    def form(self) -> str:
        """"explicit", "weight_sharing" (an unrolled refinement) or "ifr" (a refinement that solves)."""
        if self.refinement is None:
            return "explicit"
        return "weight_sharing" if self.refinement.mode == "unrolled" else "ifr"

    def _regularised(self, iteration: int | None) -> bool:
        if not (self.training and self.jacobian_weight > 0 and iteration is not None):
            return False
        return int((iteration + 1) * self.jacobian_frequency) > int(iteration * self.jacobian_frequency)

    def forward(self, x: torch.Tensor, iteration: int | None = None) -> torch.Tensor:
        if self.refinement is None:
            return self.layers(x)
        return self._refine(self.refinement, x, iteration)

    def forward_levels(self, levels: list[torch.Tensor], iteration: int | None = None) -> list[torch.Tensor]:
        """The tower on feature levels of different sizes (an FPN's), [(N, C, H_l, W_l)] -> the same shapes.

        The explicit and weight-sharing forms apply the same layers to each level, so this is
        ``[tower(x) for x in levels]``. The "ifr" form solves the fixed point of all levels of an image at
        once: one solve per image over the concatenation of its levels (``LevelsBlock``), so an image's
        levels stop together, at the joint residual, and the solver's bookkeeping runs once instead of
        once per level. ``refinement.last_stats`` then has one entry per image.
        """
        if self.refinement is None or self.refinement.resolve_mode(iteration) == "unrolled":
            return [RefinementTower.forward(self, x, iteration) for x in levels]
        packed = LevelsBlock(self.refinement.block, levels)
        joint = EquilibriumRefinement(packed, mode="implicit", solver=self.refinement.solver,
                                      backward=self.refinement.backward_strategy,
                                      share_identical=self.refinement.share_identical,
                                      allow_tf32=self.refinement.allow_tf32).train(self.training)
        out = self._refine(joint, packed.pack(levels), iteration)
        self.refinement.last_stats, self.refinement.last_solved = joint.last_stats, joint.last_solved
        return packed.unpack(out)

    def _refine(self, refinement: EquilibriumRefinement, x: torch.Tensor, iteration: int | None) -> torch.Tensor:
        """``refinement(x)``, with the Jacobian regularisation of the iterations that have it."""
        regularised = self._regularised(iteration)
        backward = refinement.backward_strategy
        if isinstance(backward, ImplicitBackward):
            backward.jacobian_probes = self.jacobian_probes if regularised else 0
        out = refinement(x, iteration=iteration)
        implicit = refinement.last_stats is not None  # an unrolled call leaves no solve statistics
        self.last_jacobian_loss = self.jacobian_weight * backward.last_jacobian \
            if regularised and implicit and backward.last_jacobian is not None else None
        return out

    def solver_stats(self) -> dict[str, float]:
        """Scalars of the last forward and backward solves for logging (empty after an unrolled call or
        in the explicit form): ``forward_iterations``, ``forward_rel_residual``, ``forward_diverged``,
        ``backward_*``."""
        if self.refinement is None:
            return {}
        stats = {}
        solves = {"forward": self.refinement.last_stats,
                  "backward": getattr(self.refinement.backward_strategy, "last_stats", None)}
        for kind, record in solves.items():
            if record is not None:
                stats.update({f"{kind}_{k}": v for k, v in record.summary().items()})
        return stats
