"""A short tour of the IFR fixed-point core: solve one batch of RoI features, check the gradient.

Run: ``python -m ifr.deq.demo [--rois N]``. Prints how each solver converges on the IFR block at
mask-head shape, and how far the implicit and phantom gradients are from autograd through an
unrolled iteration run to convergence.
"""
from __future__ import annotations

import argparse
import time

import torch

from . import EquilibriumRefinement, IFRBlock, ImplicitBackward, PhantomBackward, SolverConfig
from .solvers import SOLVERS


def solver_table(rois: int, tol: float, max_iter: int) -> None:
    block = IFRBlock(256, weight_norm=True)
    x = torch.randn(rois, 256, 14, 14)
    print(f"Forward solve of the IFR block on {rois} RoIs x 256 x 14 x 14 "
          f"(relative tolerance {tol:g}, at most {max_iter} steps):")
    print(f"| {'solver':<11} | iterations | converged | max rel. residual | time (s) |")
    print(f"|{'-' * 13}|{'-' * 12}|{'-' * 11}|{'-' * 19}|{'-' * 10}|")
    for name in sorted(SOLVERS):
        start = time.perf_counter()
        with torch.no_grad():
            _, stats = SolverConfig(name, max_iter=max_iter, tol=tol).solve(
                lambda z: block(z, x), torch.zeros_like(x))
        elapsed = time.perf_counter() - start
        s = stats.summary()
        print(f"| {name:<11} | {stats.iterations:>10} | {s['converged_fraction']:>8.0%}  "
              f"| {s['rel_residual']:>17.2e} | {elapsed:>8.2f} |")


def gradient_check() -> None:
    block = IFRBlock(16, num_groups=4, weight_norm=True).double()
    x = torch.randn(4, 16, 7, 7, dtype=torch.float64, requires_grad=True)
    target = torch.randn_like(x)

    def grads(z):
        return torch.autograd.grad(((z - target) ** 2).sum(), [x, *block.parameters()])

    z_ref = torch.zeros_like(x)
    for _ in range(300):
        z_ref = block(z_ref, x)
    reference = grads(z_ref)
    tight = SolverConfig("broyden", max_iter=200, tol=1e-12, stop_mode="abs")
    print("\nGradient vs autograd through 300 unrolled iterations (float64, 16 channels):")
    print("| backward            | max relative error over x and parameters |")
    print("|---------------------|------------------------------------------|")
    for label, backward in [("implicit (Broyden)", ImplicitBackward(tight)),
                            ("phantom, 1 step", PhantomBackward(steps=1)),
                            ("phantom, 10 steps", PhantomBackward(steps=10))]:
        layer = EquilibriumRefinement(block, mode="implicit", solver=tight, backward=backward).train()
        approx = grads(layer(x))
        error = max(((a - r).norm() / r.norm()).item() for a, r in zip(approx, reference))
        print(f"| {label:<19} | {error:>40.2e} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rois", type=int, default=32, help="number of RoIs in the batch")
    parser.add_argument("--tol", type=float, default=1e-4, help="relative residual tolerance")
    parser.add_argument("--max-iter", type=int, default=50, help="solver step limit")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    solver_table(args.rois, args.tol, args.max_iter)
    gradient_check()


if __name__ == "__main__":
    main()
