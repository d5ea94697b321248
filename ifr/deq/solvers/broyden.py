"""Limited-memory Broyden's method ("good" Broyden) for fixed points z = f(z)."""
from __future__ import annotations

from typing import Callable

import torch

from .progress import SolveProgress, check_solver_arguments, flat_map, flatten_batch
from .stats import SolverStats


def _apply_inverse_jacobian(us: torch.Tensor, vts: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """H x with H = -I + sum_i u_i v_i^T.  us, vts: (B, k, D); x: (B, D)."""
    return -x + torch.einsum("bk,bkd->bd", torch.einsum("bkd,bd->bk", vts, x), us)


def _apply_inverse_jacobian_transposed(us: torch.Tensor, vts: torch.Tensor,
                                       x: torch.Tensor) -> torch.Tensor:
    """x^T H (as a (B, D) tensor) with H = -I + sum_i u_i v_i^T."""
    return -x + torch.einsum("bk,bkd->bd", torch.einsum("bkd,bd->bk", us, x), vts)


def broyden_solve(
    f: Callable[[torch.Tensor], torch.Tensor],
    z0: torch.Tensor,
    *,
    max_iter: int = 15,
    tol: float = 1e-4,
    stop_mode: str = "rel",
    memory: int | None = None,
    divergence_ratio: float = 1e6,
) -> tuple[torch.Tensor, SolverStats]:
    """Solves z = f(z) by Broyden's method on g(z) = f(z) - z.

    The inverse Jacobian of g is approximated as H = -I + sum of rank-one terms, one added per step
    by the good-Broyden update and at most ``memory`` kept (oldest dropped first). The first step,
    with H = -I, is therefore a plain fixed-point step z1 = f(z0). Samples are independent: each has
    its own low-rank terms, its own convergence test, and stops moving once converged or diverged.

    Args:
        f: the map; takes and returns tensors shaped like ``z0``, acting on each sample independently.
        z0: (B, ...) initial guess.
        max_iter: at most this many steps (one evaluation of ``f`` each, plus one for ``z0``).
        tol, stop_mode: convergence test per sample (see ``SolveProgress``).
        memory: number of rank-one terms kept; defaults to ``max_iter`` (full memory).
        divergence_ratio: protective break threshold (see ``SolveProgress``).

    Returns:
        The lowest-residual iterate of each sample, shaped like ``z0``, and the solve's statistics.
    """
    check_solver_arguments(max_iter, tol, stop_mode)
    memory = max_iter if memory is None else memory
    if memory < 1 and max_iter > 0:
        raise ValueError(f"memory must be >= 1, got {memory}")
    g_map = flat_map(f, z0.shape)
    z = flatten_batch(z0).clone()
    fz = g_map(z)
    gz = fz - z
    progress = SolveProgress(z, fz, tol, stop_mode, divergence_ratio)
    batch, dim = z.shape
    us = z.new_zeros(batch, max(memory, 1), dim)
    vts = z.new_zeros(batch, max(memory, 1), dim)
    stored = 0
    update = gz
    steps = 0
    while steps < max_iter and not progress.done():
        active = progress.active
        dz = update * active.unsqueeze(1).to(z.dtype)
        z = z + dz
        fz = g_map(z, fz, active)
        gz_new = fz - z
        dg = gz_new - gz
        gz = gz_new
        steps += 1
        progress.update(z, fz)

        used = min(stored, memory)
        vt = _apply_inverse_jacobian_transposed(us[:, :used], vts[:, :used], dz)
        denominator = (vt * dg).sum(dim=1, keepdim=True)
        u = (dz - _apply_inverse_jacobian(us[:, :used], vts[:, :used], dg)) / denominator
        # A zero denominator (frozen sample, or a step that did not change g) adds no information.
        u = torch.nan_to_num(u, nan=0.0, posinf=0.0, neginf=0.0)
        slot = stored % memory
        us[:, slot] = u
        vts[:, slot] = vt
        stored += 1
        used = min(stored, memory)
        update = -_apply_inverse_jacobian(us[:, :used], vts[:, :used], gz)
    return progress.result(steps, z0.shape)
