"""Reaching into a built detector for the tools that study its mask head."""
from __future__ import annotations

from torch import nn

from ifr.deq import EquilibriumRefinement
from ifr.errors import UserError


def find_refinement(model: nn.Module) -> EquilibriumRefinement:
    """The ``EquilibriumRefinement`` of the model's mask head (IFR or weight-sharing); a UserError
    saying so when the mask head has none (the 4-conv head)."""
    head = getattr(getattr(model, "roi_heads", None), "mask_head", None)
    refinement = getattr(head, "refinement", None)
    if not isinstance(refinement, EquilibriumRefinement):
        raise UserError("this tool studies the fixed-point refinement of the mask head, and this experiment's "
                        "mask head has none: run it in an IFR or weight-sharing folder")
    return refinement
