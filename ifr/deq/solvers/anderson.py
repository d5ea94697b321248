"""Anderson acceleration (type II) for fixed points z = f(z)."""
from __future__ import annotations

from typing import Callable

import torch

from .progress import BatchLayout, SolveProgress, SyncPolicy, check_solver_arguments, flat_map
from .stats import SolverStats


def _mixing_weights(gram: torch.Tensor, regularization: float) -> torch.Tensor:
    """Weights alpha (B, n) minimising ||sum_i alpha_i r_i|| subject to sum_i alpha_i = 1.

    gram: (B, n, n) float64 Gram matrix of the residuals r_i. The Tikhonov term is relative to the
    Gram matrix's scale so the solver does not depend on the units of z.
    """
    n = gram.shape[-1]
    scale = gram.diagonal(dim1=1, dim2=2).mean(dim=1).clamp_min(1e-30)
    eye = torch.eye(n, dtype=gram.dtype, device=gram.device)
    regularized = gram + (regularization * scale).view(-1, 1, 1) * eye
    ones = torch.ones(gram.shape[0], n, 1, dtype=gram.dtype, device=gram.device)
    w = torch.linalg.solve(regularized, ones).squeeze(2)
    return w / w.sum(dim=1, keepdim=True)


class _History:
    """The last ``slots`` values f(z_i) and residuals r_i = f(z_i) - z_i, with the residuals' Gram matrix
    kept up to date one row per step. Residuals and Gram matrix are float64: the small least-squares
    system becomes ill-conditioned as the residuals shrink."""

    def __init__(self, z: torch.Tensor, slots: int):
        batch, dim = z.shape
        self.slots, self.stored = slots, 0
        self.values = z.new_empty(batch, slots, dim)
        self.residuals = z.new_empty(batch, slots, dim, dtype=torch.float64)
        self.gram = z.new_zeros(batch, slots, slots, dtype=torch.float64)

    @property
    def used(self) -> int:
        return min(self.stored, self.slots)

    def add(self, z: torch.Tensor, fz: torch.Tensor) -> None:
        slot = self.stored % self.slots
        # Frozen diverged samples may carry non-finite values; they must not poison the solve.
        residual = torch.nan_to_num((fz - z).double(), nan=0.0, posinf=0.0, neginf=0.0)
        self.values[:, slot] = fz
        self.residuals[:, slot] = residual
        self.stored += 1
        row = torch.bmm(residual.unsqueeze(1), self.residuals[:, :self.used].transpose(1, 2)).squeeze(1)
        self.gram[:, slot, :self.used] = row
        self.gram[:, :self.used, slot] = row

    def mix(self, regularization: float, damping: float) -> torch.Tensor:
        """damping * sum_i a_i f(z_i) + (1 - damping) * sum_i a_i z_i with the optimal weights a."""
        used = self.used
        alpha = _mixing_weights(self.gram[:, :used, :used], regularization).unsqueeze(1)
        mixed = torch.bmm(alpha.to(self.values.dtype), self.values[:, :used]).squeeze(1)
        if damping < 1.0:  # sum a_i z_i = sum a_i f(z_i) - sum a_i r_i
            mixed_residual = torch.bmm(alpha, self.residuals[:, :used]).squeeze(1)
            mixed = mixed - (1.0 - damping) * mixed_residual.to(mixed.dtype)
        return mixed


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
    sync: SyncPolicy | None = None,
) -> tuple[torch.Tensor, SolverStats]:
    """Solves z = f(z) by Anderson acceleration over the last ``memory`` iterates.

    Each step mixes the stored values: z <- damping * sum a_i f(z_i) + (1 - damping) * sum a_i z_i,
    with the weights a minimising the mixed residual. Cost per step: one evaluation of ``f`` and about
    three passes over the ``memory`` stored values. Same interface and return value as
    ``broyden_solve``.
    """
    check_solver_arguments(max_iter, tol, stop_mode)
    if memory < 1:
        raise ValueError(f"memory must be >= 1, got {memory}")
    if not 0.0 < damping <= 1.0:
        raise ValueError(f"damping must be in (0, 1], got {damping}")
    sync = sync if sync is not None else SyncPolicy.for_device(z0.device)
    layout = BatchLayout(z0)
    g_map = flat_map(f, layout, sync.restrict)
    z = layout.flatten(z0).clone()
    fz = g_map(z)
    progress = SolveProgress(z, fz, tol, stop_mode, divergence_ratio, check_period=sync.check_period)
    history = _History(z, min(memory, max_iter + 1))
    history.add(z, fz)
    steps = 0
    while steps < max_iter and not progress.done():
        active = progress.active
        z = torch.where(active.unsqueeze(1), history.mix(regularization, damping), z)
        fz = g_map(z, fz, active)
        steps += 1
        progress.update(z, fz)
        if steps < max_iter:
            history.add(z, fz)
    return progress.result(steps, layout)
