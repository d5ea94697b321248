"""Per-sample bookkeeping shared by the fixed-point solvers.

Every solver runs on a batch flattened to (B, D). Each sample converges, diverges or runs out of
iterations on its own; a sample that has converged or diverged is frozen (the solver stops moving it),
and each sample's lowest-residual iterate is what the solver returns.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .stats import SolverStats

STOP_MODES = ("abs", "rel")


def check_solver_arguments(max_iter: int, tol: float, stop_mode: str) -> None:
    if stop_mode not in STOP_MODES:
        raise ValueError(f"stop_mode must be one of {STOP_MODES}, got {stop_mode!r}")
    if max_iter < 0:
        raise ValueError(f"max_iter must be >= 0, got {max_iter}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol}")


# Steps between convergence checks on a GPU, where each check is a host-device synchronisation.
CUDA_CHECK_PERIOD = 2


@dataclass(frozen=True)
class SyncPolicy:
    """How often a solve synchronises with the device.

    ``check_period``: the "all samples done?" test (a host sync) runs after every ``check_period``-th
    step only; between checks the loop goes on, with the finished samples frozen, so the answers are
    the same (each sample's lowest-residual iterate) and at most ``check_period - 1`` steps are spent
    on an already finished batch. ``restrict``: evaluate the map on the unfinished samples only,
    which needs their indices on the host (a sync per step) and pays off where a sync is free.
    """

    check_period: int = 1
    restrict: bool = True

    def __post_init__(self) -> None:
        if self.check_period < 1:
            raise ValueError(f"check_period must be >= 1, got {self.check_period}")

    @classmethod
    def for_device(cls, device: torch.device, cuda_check_period: int = CUDA_CHECK_PERIOD) -> "SyncPolicy":
        """On the CPU a sync costs nothing: check every step and skip finished samples (measured
        faster, BENCHMARKS.md). On a GPU: no per-step sync, a check every ``cuda_check_period`` steps."""
        if device.type == "cpu":
            return cls(check_period=1, restrict=True)
        return cls(check_period=cuda_check_period, restrict=False)


class BatchLayout:
    """Flattens (B, ...) tensors laid out like ``like`` to (B, D) rows and back, without copies.

    A channels_last 4-d tensor is flattened in its memory order (H, W, C), so that the solvers'
    (B, D) iterates unflatten to channels_last tensors again and the map keeps its faster layout.
    """

    def __init__(self, like: torch.Tensor):
        self.shape = like.shape
        self.channels_last = (like.dim() == 4 and not like.is_contiguous()
                              and like.is_contiguous(memory_format=torch.channels_last))

    def flatten(self, t: torch.Tensor) -> torch.Tensor:
        """(n, ...) -> (n, D); also for n = 0, where reshape(n, -1) is ambiguous."""
        if self.channels_last:
            t = t.permute(0, 2, 3, 1)
        return t.reshape(t.shape[0], math.prod(t.shape[1:]))

    def unflatten(self, flat: torch.Tensor) -> torch.Tensor:
        """(n, D) -> (n, ...) in the layout of ``like``."""
        if self.channels_last:
            _, c, h, w = self.shape
            return flat.view(flat.shape[0], h, w, c).permute(0, 3, 1, 2)
        return flat.view(flat.shape[0], *self.shape[1:])


def flat_map(f, layout: BatchLayout, restrict: bool = True):
    """Wraps ``f`` on tensors of ``layout`` as a map on their (B, D) flattening.

    ``mapped(z)`` evaluates every sample. ``mapped(z, previous, active)`` gives the samples no longer
    being solved (``active`` (B,) bool False) their ``previous`` value: a frozen sample's z has not
    moved, so its f(z) is unchanged. With ``restrict`` and a map that offers ``f.restricted(index)``
    (the map on those samples alone) only the active samples are evaluated, so converged RoIs cost
    nothing while the rest are solved; that needs their indices on the host, one sync per call.
    """
    restrictable = restrict and hasattr(f, "restricted")

    def mapped(z_flat: torch.Tensor, previous: torch.Tensor | None = None,
               active: torch.Tensor | None = None) -> torch.Tensor:
        if previous is not None and restrictable:
            index = active.nonzero().squeeze(1)  # the one host sync of this call
            if index.numel() < active.numel():
                out = previous.clone()
                if index.numel() > 0:
                    out[index] = layout.flatten(f.restricted(index)(layout.unflatten(z_flat[index])))
                return out
            return layout.flatten(f(layout.unflatten(z_flat)))
        out = layout.flatten(f(layout.unflatten(z_flat)))
        if previous is not None:
            out = torch.where(active.unsqueeze(1), out, previous)
        return out

    return mapped


class SolveProgress:
    """Tracks residuals, the lowest-residual iterate and the per-sample stop state of one solve.

    Args:
        z, fz: (B, D) initial guess and the map's value there.
        tol, stop_mode: a sample converges when its residual (absolute ``||f(z) - z||`` or relative
            ``||f(z) - z|| / ||f(z)||``) is below ``tol``.
        divergence_ratio: protective break: a sample whose absolute residual exceeds this multiple of
            its initial one, or becomes non-finite, is stopped and keeps its best iterate.
        check_period: ``done()`` tests the samples (a host sync) after every ``check_period``-th
            update only, and says "not done" in between (``SyncPolicy``).

    The best iterate is the one with the lowest absolute residual, whatever the stop mode: a relative
    residual also falls when the iterate runs away (f(z) grows with z), so it cannot rank iterates.
    """

    def __init__(self, z: torch.Tensor, fz: torch.Tensor, tol: float, stop_mode: str,
                 divergence_ratio: float, gz: torch.Tensor | None = None, check_period: int = 1):
        self.tol = tol
        self.check_period = check_period
        self.updates = 0
        self.stop_mode = stop_mode
        self.divergence_ratio = divergence_ratio
        abs_res, rel_res = self._residuals(z, fz, gz)
        measure = self._measure(abs_res, rel_res)
        self.initial_abs = abs_res
        self.best_abs = abs_res.clone()
        self.best_rel = rel_res.clone()
        self.best_z = z.clone()
        self.converged = measure < tol
        self.diverged = ~torch.isfinite(measure)
        self.trace = [abs_res]
        self.sample_steps = torch.zeros(abs_res.shape, dtype=torch.long, device=abs_res.device)
        self._done: bool | None = None

    @staticmethod
    def _residuals(z: torch.Tensor, fz: torch.Tensor,
                   gz: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        abs_res = (fz - z if gz is None else gz).norm(dim=1)
        rel_res = abs_res / (fz.norm(dim=1) + 1e-12)
        return abs_res, rel_res

    def _measure(self, abs_res: torch.Tensor, rel_res: torch.Tensor) -> torch.Tensor:
        return abs_res if self.stop_mode == "abs" else rel_res

    @property
    def active(self) -> torch.Tensor:
        """(B,) True for the samples the solver should still move."""
        return ~(self.converged | self.diverged)

    def done(self) -> bool:
        # Reading the flag is a host-device synchronisation: at most once per update, however often
        # asked, and only every ``check_period`` updates.
        if self._done is None:
            self._done = False if self.updates % self.check_period else not bool(self.active.any())
        return self._done

    def update(self, z: torch.Tensor, fz: torch.Tensor, gz: torch.Tensor | None = None) -> None:
        """Records the new iterate ``z`` (with ``fz = f(z)``, and ``gz = fz - z`` if the solver has it)
        of the samples that are still active."""
        active = self.active
        self.sample_steps += active
        abs_res, rel_res = self._residuals(z, fz, gz)
        measure = self._measure(abs_res, rel_res)
        improved = active & (abs_res < self.best_abs)
        self.best_abs = torch.where(improved, abs_res, self.best_abs)
        self.best_rel = torch.where(improved, rel_res, self.best_rel)
        self.best_z = torch.where(improved.unsqueeze(1), z, self.best_z)
        self.converged = self.converged | (active & (measure < self.tol))
        blown_up = ~torch.isfinite(measure) | (abs_res > self.divergence_ratio * self.initial_abs)
        self.diverged = self.diverged | (active & ~self.converged & blown_up)
        self.trace.append(torch.where(active, abs_res, self.trace[-1]))
        self.updates += 1
        self._done = None

    def result(self, iterations: int, layout: BatchLayout) -> tuple[torch.Tensor, SolverStats]:
        stats = SolverStats(
            iterations=iterations,
            abs_residual=self.best_abs,
            rel_residual=self.best_rel,
            converged=self.converged,
            diverged=self.diverged,
            trace=torch.stack(self.trace),
            sample_steps=self.sample_steps,
        )
        return layout.unflatten(self.best_z), stats
