"""The original IFR code's Broyden solver, step for step, to reproduce the released models' outputs.

It differs from ``broyden_solve`` in three ways that change results, all kept on purpose:
  * the first step is ``z1 = z0 - g(z0)`` (= 2 z0 - f(z0)), away from the fixed point, although its
    inverse-Jacobian estimate starts at -I (whose consistent first step, taken by ``broyden_solve``,
    is z0 + g(z0) = f(z0)); later versions of the code it was copied from corrected this;
  * the stop test and the choice of the returned iterate are global: the Frobenius norm of g over
    the whole batch (all RoIs of an image) against ``tol * sqrt(numel)``, and the iterate with the
    lowest such norm is returned for every sample;
  * converged samples keep moving until the batch as a whole stops.
Use it (``MODEL.ROI_MASK_HEAD.F_SOLVER broyden_cvpods``) to evaluate released checkpoints exactly
as cvpods did; train and evaluate new models with ``broyden_solve``.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .broyden import _low_rank_product
from .progress import BatchLayout, check_solver_arguments, flat_map
from .stats import SolverStats

# The original caps its rank-one memory at min(max_iter, 27).
_MAX_MEMORY = 27


def _inverse_jacobian_times(us: torch.Tensor, vts: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """H x with H = -I + sum_i u_i v_i^T.  us, vts: (B, k, D); x: (B, D)."""
    return _low_rank_product(us, vts, x) - x


def _times_inverse_jacobian(us: torch.Tensor, vts: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """x^T H, as a (B, D) tensor."""
    return _low_rank_product(vts, us, x) - x


def cvpods_broyden_solve(
    f: Callable[[torch.Tensor], torch.Tensor],
    z0: torch.Tensor,
    *,
    max_iter: int = 15,
    tol: float = 1e-5,
    stop_mode: str = "abs",
    divergence_ratio: float = 1e6,
) -> tuple[torch.Tensor, SolverStats]:
    """Solves z = f(z) for a batch as the original IFR code does (see the module docstring).

    Args:
        f, z0: as for ``broyden_solve``; z0 is (B, ...).
        max_iter: at most this many steps (the original's F_THRES).
        tol: the batch stops once ``||f(z) - z||_F < tol * sqrt(z.numel())`` (the original: 1e-5).
        stop_mode: accepted for the common solver interface and validated; the test is always the
            absolute batch-global one above.
        divergence_ratio: stop when the batch residual exceeds this multiple of the initial one.

    Returns:
        The batch's lowest-residual iterate (not f of it), shaped like ``z0``, and statistics whose
        per-sample residuals are those of that iterate.
    """
    check_solver_arguments(max_iter, tol, stop_mode)
    layout = BatchLayout(z0)
    g_map = flat_map(f, layout)
    z = layout.flatten(z0).clone()
    batch, dim = z.shape
    if z.numel() == 0:  # no RoIs: nothing to solve (the original crashes here)
        empty = z.new_zeros(0)
        flags = torch.zeros(0, dtype=torch.bool, device=z.device)
        return z0.clone(), SolverStats(0, empty, empty, flags, flags, z.new_zeros(1, 0),
                                       torch.zeros(0, dtype=torch.long, device=z.device))
    fz = g_map(z)
    gz = fz - z
    eps = tol * math.sqrt(batch * dim)
    memory = max(min(max_iter, _MAX_MEMORY), 1)
    us = z.new_zeros(batch, memory, dim)
    vts = z.new_zeros(batch, memory, dim)
    update = -gz
    initial = lowest = objective = gz.norm().item()
    best_z, best_fz = z, fz
    trace = [gz.norm(dim=1)]
    steps = 0
    diverged = False
    while objective >= eps and steps < max_iter:
        dz = update
        z = z + dz
        fz = g_map(z)
        gz_new = fz - z
        dg = gz_new - gz
        gz = gz_new
        steps += 1
        objective = gz.norm().item()
        trace.append(gz.norm(dim=1))
        if objective < lowest:
            lowest, best_z, best_fz = objective, z.clone(), fz
        if objective < eps:
            break
        if objective > initial * divergence_ratio:
            diverged = True
            break
        used = min(steps - 1, memory)
        vt = _times_inverse_jacobian(us[:, :used], vts[:, :used], dz)
        u = (dz - _inverse_jacobian_times(us[:, :used], vts[:, :used], dg)) / (vt * dg).sum(dim=1, keepdim=True)
        # The original zeroes NaNs only (a 0/0 update); infinities pass through as they did there.
        us[:, (steps - 1) % memory] = torch.where(torch.isnan(u), torch.zeros_like(u), u)
        vts[:, (steps - 1) % memory] = torch.where(torch.isnan(vt), torch.zeros_like(vt), vt)
        update = -_inverse_jacobian_times(us[:, :min(steps, memory)], vts[:, :min(steps, memory)], gz)
    abs_residual = (best_fz - best_z).norm(dim=1)
    flags = torch.ones(batch, dtype=torch.bool, device=z.device)
    stats = SolverStats(
        iterations=steps,
        abs_residual=abs_residual,
        rel_residual=abs_residual / (best_fz.norm(dim=1) + 1e-12),
        converged=flags & (lowest < eps),
        diverged=flags & diverged,
        trace=torch.stack(trace),
        sample_steps=torch.full((batch,), steps, dtype=torch.long, device=z.device),  # no sample is frozen
    )
    return layout.unflatten(best_z), stats
