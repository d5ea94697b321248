"""Plugs a block f(z, x) into any head as a fixed-point (or weight-shared, unrolled) refinement."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .backward import ImplicitBackward, PhantomBackward
from .precision import ieee_float32
from .sharing import distinct_samples, take_samples
from .solvers import SolverConfig, SolverStats

MODES = ("unrolled", "implicit", "scheduled")


class BlockMap:
    """z -> block(z, x). The block acts on each sample alone (convolutions and GroupNorm), so the
    solvers may evaluate it on the samples still being solved only (``restricted``)."""

    def __init__(self, block: nn.Module, x: torch.Tensor):
        self.block, self.x = block, x

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return self.block(z, self.x)

    def restricted(self, index: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        x = self.x[index]
        return lambda z: self.block(z, x)


class EquilibriumRefinement(nn.Module):
    """Refines x (N, C, H, W) into z (N, C, H, W) with a block ``block(z, x)``.

    Modes:
        ``unrolled``: ``num_unrolled`` applications from z0 = 0, differentiated by plain autograd
            (the weight-sharing form).
        ``implicit``: z* = f(z*, x) solved by ``solver`` from z0 = 0 without autograd; gradients come
            from ``backward`` (implicit or phantom). With gradients enabled the output is f(z*) with
            that backward attached, otherwise (inference) the lowest-residual iterate z* itself.
        ``scheduled``: the original IFR schedule: ``unrolled`` for training iterations
            ``iteration < pretrained_steps``, ``implicit`` afterwards and in eval mode. Training calls
            must pass ``iteration`` (the global, 0-based training iteration).

    ``share_identical`` (inference only, per-sample solvers only): samples of x that are bit-for-bit
    identical are solved once and share the result, which is then bit-identical to solving each
    (the solvers treat samples independently and the block acts on each alone). Training calls and
    ``broyden_cvpods`` (batch-global stop test) solve every sample.

    ``allow_tf32``: let the forward solve run convolutions in TF32 on GPUs that have it. Off by
    default: TF32's rounding (~1e-4 relative per evaluation) is a floor under the residual at the
    usual tolerances, so solves would stall and run to their step limit (``ieee_float32``). The
    implicit backward has its own switch (``ImplicitBackward.allow_tf32``).

    ``last_stats`` holds the forward solve's statistics of the most recent implicit call, one entry
    per sample of x (None after an unrolled call); ``last_solved`` the number of samples that call
    actually solved. The backward strategy keeps its own ``last_stats``.
    """

    def __init__(
        self,
        block: nn.Module,
        *,
        mode: str = "scheduled",
        num_unrolled: int = 4,
        pretrained_steps: int = 0,
        solver: SolverConfig | None = None,
        backward: ImplicitBackward | PhantomBackward | None = None,
        share_identical: bool = True,
        allow_tf32: bool = False,
    ):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if num_unrolled < 1:
            raise ValueError(f"num_unrolled must be >= 1, got {num_unrolled}")
        if pretrained_steps < 0:
            raise ValueError(f"pretrained_steps must be >= 0, got {pretrained_steps}")
        self.block = block
        self.mode = mode
        self.num_unrolled = num_unrolled
        self.pretrained_steps = pretrained_steps
        self.solver = solver if solver is not None else SolverConfig()
        self.backward_strategy = backward if backward is not None else ImplicitBackward()
        self.share_identical = share_identical
        self.allow_tf32 = allow_tf32
        self.last_stats: SolverStats | None = None
        self.last_solved: int | None = None

    def resolve_mode(self, iteration: int | None) -> str:
        """The mode (``unrolled`` or ``implicit``) a call with this training iteration uses."""
        if self.mode != "scheduled":
            return self.mode
        if not self.training:
            return "implicit"
        if iteration is None:
            raise ValueError(
                "EquilibriumRefinement in 'scheduled' mode needs the training iteration in training "
                "mode: call it as layer(x, iteration=it) (or use mode='unrolled'/'implicit')")
        return "unrolled" if iteration < self.pretrained_steps else "implicit"

    def forward(self, x: torch.Tensor, iteration: int | None = None) -> torch.Tensor:
        if self.resolve_mode(iteration) == "unrolled":
            return self.unrolled(x)
        return self.implicit(x)

    def unrolled(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.zeros_like(x)
        for _ in range(self.num_unrolled):
            z = self.block(z, x)
        self.last_stats = self.last_solved = None
        return z

    def implicit(self, x: torch.Tensor) -> torch.Tensor:
        # Under mixed precision the solves still run in float32: residuals of 1e-5 and Broyden's
        # secant updates are below half precision's resolution. The output is then float32.
        with torch.autocast(x.device.type, enabled=False):
            if x.dtype in (torch.float16, torch.bfloat16):
                x = x.float()
            needs_grad = torch.is_grad_enabled() and self._needs_grad(x)
            with torch.no_grad(), ieee_float32(enabled=not self.allow_tf32):
                z_star = self._solve(x, share=not needs_grad)
            if needs_grad:
                return self.backward_strategy(BlockMap(self.block, x), z_star)
            return z_star

    def _solve(self, x: torch.Tensor, share: bool) -> torch.Tensor:
        """z* for every sample of x, solving each distinct sample once when ``share`` allows it."""
        distinct = distinct_samples(x) if share and self.share_identical and self.solver.per_sample else None
        if distinct is None or distinct.first.numel() == x.shape[0]:
            z_star, self.last_stats = self.solver.solve(BlockMap(self.block, x), torch.zeros_like(x))
            self.last_solved = x.shape[0]
            return z_star
        x_distinct = take_samples(x, distinct.first)
        z_distinct, stats = self.solver.solve(BlockMap(self.block, x_distinct), torch.zeros_like(x_distinct))
        self.last_stats, self.last_solved = stats.gather(distinct.inverse), distinct.first.numel()
        return take_samples(z_distinct, distinct.inverse)

    def _needs_grad(self, x: torch.Tensor) -> bool:
        return x.requires_grad or any(p.requires_grad for p in self.block.parameters())
