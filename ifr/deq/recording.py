"""Capturing what an equilibrium layer is asked to solve (for convergence plots and solver benchmarks)."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def recorded_inputs(layer: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Inside the block, every input tensor ``layer`` receives (its first positional argument, e.g. the
    (N, C, H, W) RoI features of an ``EquilibriumRefinement``) is appended, detached, to the yielded
    list in call order."""
    captured: list[torch.Tensor] = []
    hook = layer.register_forward_pre_hook(lambda module, inputs: captured.append(inputs[0].detach()))
    try:
        yield captured
    finally:
        hook.remove()
