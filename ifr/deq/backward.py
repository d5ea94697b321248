"""Gradients through a fixed point z* = f(z*) without storing the forward iterations.

Each strategy is called as ``strategy(f, z_star)`` with ``z_star`` the (detached) solution and ``f``
the map closed over its input x; it returns a tensor equal (or close) to z* whose autograd graph
carries gradients to f's parameters and to x.

* ``ImplicitBackward``: exact implicit-function-theorem gradient. The output is f(z*) (one step
  with autograd); in the backward pass the incoming gradient g is replaced by the solution y of the
  adjoint fixed point y = J^T y + g, J = df/dz at z*, so that dL/dtheta = y^T df/dtheta.
* ``PhantomBackward``: approximate "phantom" gradient: k damped steps
  z <- lambda f(z) + (1 - lambda) z from z*, differentiated by autograd (k=1, lambda=1 is the
  one-step, Jacobian-free gradient).

Memory: a single graph of one (or k) applications of f is kept, whatever the forward iteration count.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .jacobian import jacobian_frobenius_estimate
from .precision import ieee_float32
from .solvers import SolverConfig, SolverStats

FixedPointMap = Callable[[torch.Tensor], torch.Tensor]


class _AdjointFixedPoint(torch.autograd.Function):
    """Identity in the forward pass; in the backward pass solves y = J^T y + grad.

    ``f_out = f(z_leaf)`` is the one differentiable step; J^T y is obtained as the vector-Jacobian
    product of that same graph with respect to ``z_leaf`` (no extra evaluation of f).
    """

    @staticmethod
    def forward(ctx, f_out, z_leaf, backward):
        ctx.save_for_backward(f_out, z_leaf)
        ctx.backward = backward
        return f_out.view_as(f_out)

    @staticmethod
    def backward(ctx, grad):
        f_out, z_leaf = ctx.saved_tensors
        backward: ImplicitBackward = ctx.backward
        if not bool(torch.isfinite(grad).all()):
            # A step that overflowed under loss scaling (GradScaler skips it): nothing to solve, and
            # no solve statistics, so it is not counted as a diverged solve.
            backward.last_stats = None
            return grad, None, None
        # y is linear in grad: solve for grad / ||grad|| and scale back, so that the stopping rule
        # (an absolute tolerance too) and the step count do not depend on the loss scale.
        scale = grad.norm().clamp_min(torch.finfo(grad.dtype).tiny)
        unit_grad = grad / scale

        def adjoint_map(y: torch.Tensor) -> torch.Tensor:
            jt_y, = torch.autograd.grad(f_out, z_leaf, y, retain_graph=True)
            return jt_y + unit_grad

        with torch.no_grad(), ieee_float32(enabled=not backward.allow_tf32):
            y, stats = backward.solver.solve(adjoint_map, torch.zeros_like(grad))
        backward.last_stats = stats
        return y * scale, None, None


@dataclass
class ImplicitBackward:
    """Exact implicit gradient; the adjoint fixed point is solved by ``solver``.

    The original IFR solves it with Broyden, F_THRES iterations and an absolute tolerance of
    2e-10 * sqrt(numel). Here the system is solved for the incoming gradient divided by its norm (and
    the solution scaled back), so tolerances, absolute ones included, are relative to the gradient's
    size: the solve is the same at any loss scale. ``last_stats`` holds the statistics of the most recent adjoint solve.

    When ``jacobian_probes`` > 0 is set (by the caller, for the steps it regularises), the call also
    leaves in ``last_jacobian`` a Hutchinson estimate of ||J||_F^2 / numel at z*, computed on the
    same one-step graph f(z*) (``ifr.deq.jacobian``), to be added to the loss; otherwise None.

    ``allow_tf32``: let the adjoint solve's vector-Jacobian products run in TF32 (off by default, see
    ``ieee_float32``).
    """

    solver: SolverConfig = field(default_factory=lambda: SolverConfig("broyden", max_iter=15, tol=1e-6))
    jacobian_probes: int = 0
    allow_tf32: bool = False
    last_stats: SolverStats | None = field(default=None, init=False, repr=False, compare=False)
    last_jacobian: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)

    def __call__(self, f: FixedPointMap, z_star: torch.Tensor) -> torch.Tensor:
        z_leaf = z_star.detach().requires_grad_()
        f_out = f(z_leaf)
        self.last_jacobian = jacobian_frobenius_estimate(f_out, z_leaf, self.jacobian_probes) \
            if self.jacobian_probes > 0 else None
        return _AdjointFixedPoint.apply(f_out, z_leaf, self)


@dataclass
class PhantomBackward:
    """Approximate gradient through ``steps`` damped applications of f starting at z*."""

    steps: int = 1
    damping: float = 1.0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"phantom gradient needs steps >= 1, got {self.steps}")
        if not 0.0 < self.damping <= 1.0:
            raise ValueError(f"phantom gradient damping must be in (0, 1], got {self.damping}")

    def __call__(self, f: FixedPointMap, z_star: torch.Tensor) -> torch.Tensor:
        z = z_star.detach()
        for _ in range(self.steps):
            z = self.damping * f(z) + (1.0 - self.damping) * z
        return z
