"""Anderson acceleration (type II) for fixed points z = f(z)."""
from __future__ import annotations

from typing import Callable

import torch

from .progress import SolveProgress, check_solver_arguments, flat_map, flatten_batch
from .stats import SolverStats


def _mixing_weights(residuals: torch.Tensor, regularization: float) -> torch.Tensor:
    """Weights alpha (B, n) minimising ||sum_i alpha_i r_i|| subject to sum_i alpha_i = 1.

    residuals: (B, n, D). The small n x n Gram system is solved in float64; the Tikhonov term is
    relative to the Gram matrix's scale so the solver does not depend on the units of z.
    """
    # Frozen diverged samples may carry non-finite values; they must not poison the solve.
    r = torch.nan_to_num(residuals.double(), nan=0.0, posinf=0.0, neginf=0.0)
    gram = torch.bmm(r, r.transpose(1, 2))
    n = gram.shape[-1]
    scale = gram.diagonal(dim1=1, dim2=2).mean(dim=1).clamp_min(1e-30)
    eye = torch.eye(n, dtype=gram.dtype, device=gram.device)
    gram = gram + (regularization * scale).view(-1, 1, 1) * eye
    ones = torch.ones(gram.shape[0], n, 1, dtype=gram.dtype, device=gram.device)
    w = torch.linalg.solve(gram, ones).squeeze(2)
    return (w / w.sum(dim=1, keepdim=True)).to(residuals.dtype)


def anderson_solve(
    f: Callable[[torch.Tensor], torch.Tensor],
    z0: torch.Tensor,
    *,
    max_iter: int = 15,
    tol: float = 1e-4,
    stop_mode: str = "rel",
    memory: int = 5,
    damping: float = 1.0,
    regularization: float = 1e-8,
    divergence_ratio: float = 1e6,
) -> tuple[torch.Tensor, SolverStats]:
    """Solves z = f(z) by Anderson acceleration over the last ``memory`` iterates.

    Each step mixes the stored values: z <- damping * sum a_i f(z_i) + (1 - damping) * sum a_i z_i,
    with the weights a minimising the mixed residual. Same interface and return value as
    ``broyden_solve``.
    """
    check_solver_arguments(max_iter, tol, stop_mode)
    if memory < 1:
        raise ValueError(f"memory must be >= 1, got {memory}")
    if not 0.0 < damping <= 1.0:
        raise ValueError(f"damping must be in (0, 1], got {damping}")
    g_map = flat_map(f, z0.shape)
    z = flatten_batch(z0).clone()
    fz = g_map(z)
    progress = SolveProgress(z, fz, tol, stop_mode, divergence_ratio)
    batch, dim = z.shape
    zs = z.new_zeros(batch, memory, dim)
    fzs = z.new_zeros(batch, memory, dim)
    zs[:, 0], fzs[:, 0] = z, fz
    stored = 1
    steps = 0
    while steps < max_iter and not progress.done():
        used = min(stored, memory)
        alpha = _mixing_weights(fzs[:, :used] - zs[:, :used], regularization).unsqueeze(1)
        mixed_f = torch.bmm(alpha, fzs[:, :used]).squeeze(1)
        mixed_z = torch.bmm(alpha, zs[:, :used]).squeeze(1) if damping < 1.0 else mixed_f
        z_new = damping * mixed_f + (1.0 - damping) * mixed_z
        active = progress.active
        z = torch.where(active.unsqueeze(1), z_new, z)
        fz = g_map(z, fz, active)
        steps += 1
        progress.update(z, fz)
        slot = stored % memory
        zs[:, slot], fzs[:, slot] = z, fz
        stored += 1
    return progress.result(steps, z0.shape)
