"""The statistics record every fixed-point solver returns."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SolverStats:
    """What a solve did, per sample and overall.

    Shapes use B for the batch (the first dimension of the solved tensor).

    Attributes:
        iterations: number of solver steps taken (each step evaluates the map once).
        abs_residual: (B,) ``||f(z) - z||_2`` of the returned iterate of each sample.
        rel_residual: (B,) ``abs_residual / ||f(z)||_2`` of the returned iterate.
        converged: (B,) True where the sample reached the tolerance.
        diverged: (B,) True where the protective break stopped the sample (its residual grew past
            ``divergence_ratio`` times its initial residual, or became non-finite).
        trace: (iterations + 1, B) absolute residual of the current iterate after each step,
            starting with the initial guess.
        sample_steps: (B,) steps that moved each sample (its map evaluations after the initial
            one; a sample frozen by convergence or divergence takes no more): the per-sample cost.
    """

    iterations: int
    abs_residual: torch.Tensor
    rel_residual: torch.Tensor
    converged: torch.Tensor
    diverged: torch.Tensor
    trace: torch.Tensor
    sample_steps: torch.Tensor

    def summary(self) -> dict[str, float]:
        """Scalars for logging: worst-case residuals over the batch and the convergence counts."""
        if self.abs_residual.numel() == 0:
            return {"iterations": float(self.iterations), "abs_residual": 0.0,
                    "rel_residual": 0.0, "converged_fraction": 1.0, "diverged": 0.0}
        return {
            "iterations": float(self.iterations),
            "abs_residual": self.abs_residual.max().item(),
            "rel_residual": self.rel_residual.max().item(),
            "converged_fraction": self.converged.float().mean().item(),
            "diverged": float(self.diverged.sum().item()),
        }

    def gather(self, index: torch.Tensor) -> "SolverStats":
        """The statistics of the samples ``index`` ((B',) long), e.g. to give each of several
        identical samples the statistics of the one solve they shared."""
        return SolverStats(self.iterations, self.abs_residual[index], self.rel_residual[index],
                           self.converged[index], self.diverged[index], self.trace[:, index],
                           self.sample_steps[index])
