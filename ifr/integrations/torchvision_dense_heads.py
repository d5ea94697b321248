"""IFR in the classification and regression towers of torchvision's one-stage detectors (RetinaNet v2
``retinanet_resnet50_fpn_v2``, FCOS ``fcos_resnet50_fpn``).

Each branch of their head (``model.head.classification_head``, ``model.head.regression_head``) runs its
tower ``conv`` (4 x [conv 3x3, GroupNorm(32), ReLU] at 256) on each of the 5 FPN levels in turn, then its
predictor. ``replace_dense_head_towers`` replaces each ``conv`` with a ``LevelTower`` injected with the
level's features::

    model = torchvision.models.detection.retinanet_resnet50_fpn_v2(weights=...)
    replace_dense_head_towers(model, head="ifr", pretrained_steps=1000)

The branch calls its tower once per level; a forward pre-hook on the branch (``LevelTower.begin``) hands
the tower the whole list of levels first, so that its step advances once per forward (not per level) and,
with ``levels="joint"`` (the default), all levels of an image are solved at once
(``RefinementTower.forward_levels``); ``levels="separate"`` solves each level on its own. Joint is the
default because it is the faster on the CPU (BENCHMARKS.md, ``benchmarks/dense_levels_bench.py``: 0.87x the
time at inference, 0.76x for a training step, at the same number of block evaluations): one solve has
one solver's bookkeeping per step (Broyden's updates, the residual tests and their host syncs) and one
adjoint solve in the backward, where separate solves have five of each; what separate solves could save,
further steps of the small levels once they converge, is cheap (P4-P7 together are about a third of P3).
"""
from __future__ import annotations

import torch
from torch import nn

from ifr.deq.tower import RefinementTower, TowerConfigError, check_tower

from .counted_tower import CountedTower, tower_settings

LEVEL_SOLVES = ("separate", "joint")


class LevelTower(CountedTower):
    """A ``CountedTower`` called by a one-stage head branch once per feature level, (N, C, H_l, W_l) ->
    the same shape. ``begin(branch, (levels,))`` (the branch's forward pre-hook) starts one forward of the
    branch: it fixes the training iteration of all its levels, and with ``levels="joint"`` (the "ifr"
    form) solves them all at once; the per-level calls that follow return those results. Called without
    ``begin`` (e.g. directly), it is a ``CountedTower``."""

    def __init__(self, channels: int, num_layers: int = 4, form: str = "ifr", *, levels: str = "joint",
                 **tower_arguments):
        super().__init__(channels, num_layers, form, **tower_arguments)
        if levels not in LEVEL_SOLVES:
            raise TowerConfigError(f"LevelTower: levels must be one of {LEVEL_SOLVES}, got {levels!r}")
        self.levels = levels
        self._iteration: int | None = None
        self._begun = False
        self._solved: list[tuple[torch.Tensor, torch.Tensor]] = []

    @property
    def solves_levels_jointly(self) -> bool:
        """Whether ``begin`` solves all levels of a forward at once (the per-level calls then hand its
        results out)."""
        return self.levels == "joint" and self.form == "ifr"

    def begin(self, branch: nn.Module, args: tuple) -> None:
        features = list(args[0])
        self._begun, self._solved = True, []
        self._iteration = int(self.step) if self.training else None
        if self.training and self.count_steps:
            self.step += 1
        if self.solves_levels_jointly:
            self._solved = list(zip(features, self.forward_levels(features, self._iteration)))

    def end(self, branch: nn.Module, args: tuple, output) -> None:
        """The branch's forward hook: its forward is over."""
        self._begun, self._solved, self._iteration = False, [], None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if not self._begun:
            return super().forward(features)
        if self._solved and self._solved[0][0] is features:
            return self._solved.pop(0)[1]
        return RefinementTower.forward(self, features, self._iteration)


def _branches(model: nn.Module) -> dict[str, nn.Module]:
    """The head branches (by name) of a torchvision RetinaNet or FCOS whose ``conv`` is a stock tower."""
    head = getattr(model, "head", None)
    branches = {name: getattr(head, name, None) for name in ("classification_head", "regression_head")}
    if any(not isinstance(getattr(b, "conv", None), nn.Sequential) or isinstance(b.conv, LevelTower)
           for b in branches.values()):
        raise TypeError("replace_dense_head_towers needs a torchvision RetinaNet or FCOS with its stock head towers "
                        "(model.head.classification_head.conv and model.head.regression_head.conv, as built by "
                        f"retinanet_resnet50_fpn_v2 / fcos_resnet50_fpn); got {type(model).__name__}")
    return branches


def replace_dense_head_towers(model: nn.Module, head: str = "ifr", *, levels: str = "joint",
                              num_unrolled: int | None = None, num_groups: int = 32, count_steps: bool = True,
                              **settings) -> dict[str, nn.Module]:
    """Replaces the towers ``conv`` of ``model.head.classification_head`` and ``model.head.regression_head``
    (in place) with a ``LevelTower`` each, of ``head`` form at the FPN's width: ``"ifr"`` (the weight-normed
    IFR block solved to its fixed point on each level, injected with the level's features; ``levels``:
    "joint", the default and the faster, solves all levels of an image at once, "separate" each level on
    its own), ``"weight_sharing"``
    (the block applied ``num_unrolled`` times) or ``"explicit"`` (the stock towers, left as they are).
    ``num_unrolled`` defaults to the stock towers' depth (4); ``num_groups`` (GroupNorm groups of the
    block, as the stock towers' 32 by default) must divide the width. ``settings``: as for
    ``replace_keypoint_head``. The predictors and every other weight of ``model`` are kept. Returns
    {"classification_head": tower, "regression_head": tower} (the stock towers for ``"explicit"``).
    """
    tower_settings("replace_dense_head_towers", head, **settings)  # checked before the model is touched
    if levels not in LEVEL_SOLVES:
        raise TowerConfigError(f"replace_dense_head_towers: levels must be one of {LEVEL_SOLVES}, got {levels!r}")
    branches = _branches(model)
    towers = {}
    for name, branch in branches.items():
        convs = [m for m in branch.conv.modules() if isinstance(m, nn.Conv2d)]
        widths = {(c.in_channels, c.out_channels) for c in convs}
        if len(widths) != 1 or len({*next(iter(widths))}) != 1:
            raise TowerConfigError(f"replace_dense_head_towers: the {name} tower's convolutions map {sorted(widths)}: "
                                   "the refinement keeps the features' width, so every convolution must keep it")
        towers[name] = (convs[0].in_channels, len(convs), convs[0].weight.device)
    if head == "explicit":
        return {name: branch.conv for name, branch in branches.items()}
    new = {}
    for name, (channels, depth, device) in towers.items():
        steps = depth if num_unrolled is None else num_unrolled
        check_tower(channels, steps, head, "group", num_groups, "replace_dense_head_towers", "the FPN features'")
        # Each tower its own settings: a backward strategy keeps its tower's last solve and probes.
        tower = LevelTower(channels, steps, head, levels=levels, num_groups=num_groups, count_steps=count_steps,
                           **tower_settings("replace_dense_head_towers", head, **settings)).to(device)
        branches[name].conv = tower
        branches[name].register_forward_pre_hook(tower.begin)
        branches[name].register_forward_hook(tower.end)
        new[name] = tower
    return new
