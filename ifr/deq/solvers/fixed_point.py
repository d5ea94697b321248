"""Plain fixed-point iteration z <- f(z)."""
from __future__ import annotations

from typing import Callable

import torch

from .progress import BatchLayout, SolveProgress, SyncPolicy, check_solver_arguments, flat_map
from .stats import SolverStats


def fixed_point_solve(
    f: Callable[[torch.Tensor], torch.Tensor],
    z0: torch.Tensor,
    *,
    max_iter: int = 15,
    tol: float = 1e-4,
    stop_mode: str = "rel",
    divergence_ratio: float = 1e6,
    sync: SyncPolicy | None = None,
) -> tuple[torch.Tensor, SolverStats]:
    """Solves z = f(z) by iterating z <- f(z); converges when f is a contraction.

    Same interface and return value as ``broyden_solve``.
    """
    check_solver_arguments(max_iter, tol, stop_mode)
    sync = sync if sync is not None else SyncPolicy.for_device(z0.device)
    layout = BatchLayout(z0)
    g_map = flat_map(f, layout, sync.restrict)
    z = layout.flatten(z0).clone()
    fz = g_map(z)
    progress = SolveProgress(z, fz, tol, stop_mode, divergence_ratio, check_period=sync.check_period)
    steps = 0
    while steps < max_iter and not progress.done():
        active = progress.active
        z = torch.where(active.unsqueeze(1), fz, z)
        fz = g_map(z, fz, active)
        steps += 1
        progress.update(z, fz)
    return progress.result(steps, layout)
