"""Fixed-point solvers sharing one interface.

``solve(f, z0, *, max_iter, tol, stop_mode, **options) -> (z, SolverStats)``: ``f`` maps a (B, ...)
tensor to one of the same shape, sample by sample; the result is each sample's lowest-residual iterate
(except ``broyden_cvpods``, which reproduces the original's batch-global stop test and choice).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from .anderson import anderson_solve
from .broyden import broyden_solve
from .cvpods_broyden import cvpods_broyden_solve
from .fixed_point import fixed_point_solve
from .progress import CUDA_CHECK_PERIOD, STOP_MODES, SyncPolicy, check_solver_arguments
from .stats import SolverStats

SOLVERS: dict[str, Callable[..., tuple[torch.Tensor, SolverStats]]] = {
    "broyden": broyden_solve,
    "anderson": anderson_solve,
    "fixed_point": fixed_point_solve,
    # The original code's solver, defects included, for parity with the released models.
    "broyden_cvpods": cvpods_broyden_solve,
}


# Solvers whose result for a sample depends on the rest of the batch (a batch-global stop test).
BATCH_GLOBAL_SOLVERS = frozenset({"broyden_cvpods"})


def get_solver(name: str) -> Callable[..., tuple[torch.Tensor, SolverStats]]:
    try:
        return SOLVERS[name]
    except KeyError:
        raise ValueError(f"unknown fixed-point solver {name!r}; choose one of {sorted(SOLVERS)}") from None


@dataclass(frozen=True)
class SolverConfig:
    """A solver chosen by name together with its settings, callable as ``config.solve(f, z0)``.

    ``options`` holds the solver-specific keyword arguments (e.g. ``memory`` for Broyden/Anderson).
    ``cuda_check_period``: on a GPU, the per-sample solvers test for convergence (a host sync) every
    this many steps (``SyncPolicy.for_device``); ``broyden_cvpods`` keeps the original's per-step test.
    """

    name: str = "broyden"
    max_iter: int = 15
    tol: float = 1e-4
    stop_mode: str = "rel"
    options: Mapping[str, Any] = field(default_factory=dict)
    cuda_check_period: int = CUDA_CHECK_PERIOD

    def __post_init__(self) -> None:
        get_solver(self.name)
        check_solver_arguments(self.max_iter, self.tol, self.stop_mode)
        if self.cuda_check_period < 1:
            raise ValueError(f"cuda_check_period must be >= 1, got {self.cuda_check_period}")

    @property
    def per_sample(self) -> bool:
        """True when each sample's result is independent of the rest of the batch."""
        return self.name not in BATCH_GLOBAL_SOLVERS

    def solve(self, f: Callable[[torch.Tensor], torch.Tensor],
              z0: torch.Tensor) -> tuple[torch.Tensor, SolverStats]:
        options = dict(self.options)
        if self.per_sample:
            options["sync"] = SyncPolicy.for_device(z0.device, self.cuda_check_period)
        return get_solver(self.name)(f, z0, max_iter=self.max_iter, tol=self.tol,
                                     stop_mode=self.stop_mode, **options)


__all__ = ["BATCH_GLOBAL_SOLVERS", "CUDA_CHECK_PERIOD", "SOLVERS", "STOP_MODES", "SolverConfig", "SolverStats",
           "SyncPolicy", "anderson_solve", "broyden_solve", "cvpods_broyden_solve", "fixed_point_solve", "get_solver"]
