"""IFR in Keypoint R-CNN's keypoint head (torchvision's ``KeypointRCNNHeads``).

The stock head is 8 x [conv 3x3, ReLU] on the pooled 14 x 14 RoIs, no norm: the first conv widens the
RoI features (256 -> 512), the other 7 are a tower at 512. ``replace_keypoint_head`` keeps the widening
conv (parameters ``0.weight``, ``0.bias``, as in torchvision's state dict) and replaces the tower; the
widening conv's output, after its ReLU, is what the refinement refines (its injection)::

    model = torchvision.models.detection.keypointrcnn_resnet50_fpn(weights=...)
    replace_keypoint_head(model, head="ifr", pretrained_steps=1000)
    loss_dict = model(images, targets)            # torchvision's training conventions, unchanged
"""
from __future__ import annotations

from collections import OrderedDict

from torch import nn

from ifr.deq.tower import TowerConfigError, check_tower

from .counted_tower import CountedTower, tower_settings


def _keypoint_convs(model: nn.Module) -> list[nn.Conv2d]:
    """The convolutions of a torchvision Keypoint R-CNN's stock keypoint head, in order."""
    head = getattr(getattr(model, "roi_heads", None), "keypoint_head", None)
    if not isinstance(head, nn.Sequential) or isinstance(head, KeypointRefinementHead):
        raise TypeError("replace_keypoint_head needs a torchvision KeypointRCNN with its stock keypoint head "
                        "(model.roi_heads.keypoint_head, a KeypointRCNNHeads); got "
                        f"{type(head).__name__ if head is not None else type(model).__name__}")
    return [m for m in head if isinstance(m, nn.Conv2d)]


class KeypointRefinementHead(nn.Sequential):
    """(R, C_in, 14, 14) pooled RoI features -> (R, C, 14, 14): torchvision's widening conv ``0`` + ReLU,
    then ``tower`` (a ``CountedTower`` at C channels, injected with the widening conv's output)."""

    def __init__(self, widening: nn.Conv2d, tower: CountedTower):
        super().__init__(OrderedDict([("0", widening), ("1", nn.ReLU(inplace=True)), ("tower", tower)]))


def replace_keypoint_head(model: nn.Module, head: str = "ifr", *, num_unrolled: int | None = None,
                          num_groups: int = 32, count_steps: bool = True, **settings) -> nn.Module:
    """Replaces the 7 convolutions after the widening one in ``model.roi_heads.keypoint_head`` (in place)
    with a ``CountedTower`` of ``head`` form at their width (512): ``"ifr"`` (the weight-normed IFR block
    solved to its fixed point), ``"weight_sharing"`` (the block applied ``num_unrolled`` times) or
    ``"explicit"`` (the stock head, left as it is). ``num_unrolled`` (the weight-sharing steps and the IFR
    schedule's unrolled steps) defaults to the number of convolutions replaced. ``settings`` are the IFR
    head's settings as for ``replace_mask_head`` (``pretrained_steps``, ``f_solver``, ``f_thres``, ...,
    ``jacobian_weight``: see ``ifr.integrations.counted_tower.tower_settings``). The block has GroupNorms
    (``num_groups`` must divide the width), although the stock head has none: without a norm the
    refined map has no fixed point in general (``ifr.deq.tower``). Every other module and weight of
    ``model``, the widening conv's included, is kept. Returns the keypoint head (the new
    ``KeypointRefinementHead``, or the stock head for ``"explicit"``).
    """
    tower_arguments = tower_settings("replace_keypoint_head", head, **settings)
    convs = _keypoint_convs(model)
    if len(convs) < 2 or any(c.in_channels != c.out_channels or c.out_channels != convs[0].out_channels
                             for c in convs[1:]):
        raise TowerConfigError("replace_keypoint_head: the keypoint head must be a widening conv followed by "
                               "convolutions at one width (torchvision's KeypointRCNNHeads(in_channels, "
                               f"(512,) * 8)); its convolutions map {[(c.in_channels, c.out_channels) for c in convs]}")
    if head == "explicit":
        return model.roi_heads.keypoint_head
    channels, depth = convs[0].out_channels, len(convs) - 1
    num_unrolled = depth if num_unrolled is None else num_unrolled
    check_tower(channels, num_unrolled, head, "none", num_groups, "replace_keypoint_head",
                "the keypoint head's")
    tower = CountedTower(channels, num_unrolled, head, num_groups=num_groups, count_steps=count_steps,
                         **tower_arguments).to(convs[0].weight.device)
    model.roi_heads.keypoint_head = KeypointRefinementHead(convs[0], tower)
    return model.roi_heads.keypoint_head
