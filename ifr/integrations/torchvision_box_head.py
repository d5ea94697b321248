"""IFR in the box head of torchvision's v2 Faster / Mask R-CNN (``FastRCNNConvFCHead``).

The stock head is 4 x [conv 3x3, BatchNorm, ReLU] at 256 on the pooled 7 x 7 RoIs, then flatten and
FC 1024 + ReLU. ``replace_box_head`` replaces the 4 convolutions (the tower) and keeps the flatten and
the FC under their torchvision names (``4``, ``5.weight``, ...), so the RoI box features are refined
before the FC::

    model = torchvision.models.detection.fasterrcnn_resnet50_fpn_v2(weights=...)
    replace_box_head(model, head="ifr", pretrained_steps=1000)

The refined forms normalise with GroupNorm, not BatchNorm: BatchNorm's statistics are the batch's, and
they would change with every iterate of a solve (docs/other_heads.md has the measurement).
"""
from __future__ import annotations

from collections import OrderedDict

from torch import nn
from torchvision.ops.misc import Conv2dNormActivation

from ifr.deq.tower import TowerConfigError, check_tower

from .counted_tower import CountedTower, tower_settings


class BoxRefinementHead(nn.Sequential):
    """(R, C, 7, 7) pooled RoI features -> (R, F): ``tower`` (a ``CountedTower`` at C channels injected
    with the RoI features), then torchvision's flatten ``4`` and FC layers ``5``, ``6``, ..."""

    def __init__(self, tower: CountedTower, rest: OrderedDict):
        super().__init__(OrderedDict([("tower", tower), *rest.items()]))


def _box_head_parts(model: nn.Module) -> tuple[list[Conv2dNormActivation], OrderedDict]:
    """(the conv layers, the modules after them by name) of a torchvision v2 box head."""
    head = getattr(getattr(model, "roi_heads", None), "box_head", None)
    convs = [m for m in head if isinstance(m, Conv2dNormActivation)] if isinstance(head, nn.Sequential) else []
    if not convs or isinstance(head, BoxRefinementHead):
        raise TypeError("replace_box_head needs a torchvision Faster/Mask R-CNN v2 with its stock box head "
                        "(model.roi_heads.box_head, a FastRCNNConvFCHead with conv layers, as built by "
                        "fasterrcnn_resnet50_fpn_v2 / maskrcnn_resnet50_fpn_v2); got "
                        f"{type(head).__name__ if head is not None else type(model).__name__}")
    rest = OrderedDict((name, m) for name, m in head.named_children() if not isinstance(m, Conv2dNormActivation))
    return convs, rest


def replace_box_head(model: nn.Module, head: str = "ifr", *, num_unrolled: int | None = None, num_groups: int = 32,
                     count_steps: bool = True, **settings) -> nn.Module:
    """Replaces the conv layers of ``model.roi_heads.box_head`` (in place) with a ``CountedTower`` of
    ``head`` form at the RoI features' width: ``"ifr"`` (the weight-normed IFR block solved to its fixed
    point, injected with the RoI features), ``"weight_sharing"`` (the block applied ``num_unrolled``
    times) or ``"explicit"`` (the stock head, left as it is). ``num_unrolled`` defaults to the number of
    conv layers replaced (4). The block normalises with GroupNorm (``num_groups`` groups, which must
    divide the width) in place of the stock BatchNorm. ``settings``: as for ``replace_keypoint_head``.
    The flatten and FC layers and every other weight of ``model`` are kept. Returns the box head (the
    new ``BoxRefinementHead``, or the stock head for ``"explicit"``).
    """
    tower_arguments = tower_settings("replace_box_head", head, **settings)
    convs, rest = _box_head_parts(model)
    widths = [(layer[0].in_channels, layer[0].out_channels) for layer in convs]
    if any(w != widths[0] or w[0] != w[1] for w in widths):
        raise TowerConfigError(f"replace_box_head: the box head's conv layers map {widths}: the refinement keeps the "
                               "RoI features' width, so every conv layer must keep it (FastRCNNConvFCHead((C, 7, 7), "
                               "[C] * 4, ...))")
    if head == "explicit":
        return model.roi_heads.box_head
    channels = widths[0][0]
    num_unrolled = len(convs) if num_unrolled is None else num_unrolled
    check_tower(channels, num_unrolled, head, "batch", num_groups, "replace_box_head", "the RoI features'")
    tower = CountedTower(channels, num_unrolled, head, num_groups=num_groups, count_steps=count_steps,
                         **tower_arguments).to(convs[0][0].weight.device)
    model.roi_heads.box_head = BoxRefinementHead(tower, rest)
    return model.roi_heads.box_head
