"""Per-step bookkeeping cost of each fixed-point solver at mask-head shape, next to one evaluation of
the IFR block on the same batch.

The solvers run a cheap map (z -> 0.5 tanh(z) + x) for a fixed number of steps (tolerance 0); the
time spent inside the map is subtracted, so what remains is the solver's own work per step (low-rank
products, residual norms, best-iterate tracking). Best of ``--repeats`` runs.

Run (in the virtual environment): ``python benchmarks/solver_overhead_bench.py [--rois 100] [--steps 8 15]``.
"""
from __future__ import annotations

import argparse
import time

import torch
from tabulate import tabulate

from ifr.deq import SOLVERS, IFRBlock


class TimedMap:
    """z -> 0.5 tanh(z) + x, accumulating the time spent inside it."""

    def __init__(self, x: torch.Tensor):
        self.x, self.spent = x, 0.0

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        out = 0.5 * torch.tanh(z) + self.x
        self.spent += time.perf_counter() - start
        return out


def solver_overhead(name: str, x: torch.Tensor, steps: int, repeats: int) -> float:
    """Seconds per step spent in the solver itself (outside the map), best of ``repeats``."""
    best = float("inf")
    for _ in range(repeats):
        f = TimedMap(x)
        start = time.perf_counter()
        SOLVERS[name](f, torch.zeros_like(x), max_iter=steps, tol=0.0)
        best = min(best, time.perf_counter() - start - f.spent)
    return best / steps


def block_evaluation(rois: int, repeats: int) -> float:
    torch.manual_seed(0)
    block = IFRBlock(256, weight_norm=True).eval()
    x = torch.randn(rois, 256, 14, 14)
    best = float("inf")
    with torch.no_grad():
        block(x, x)
        for _ in range(repeats):
            start = time.perf_counter()
            block(x, x)
            best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rois", type=int, default=100)
    parser.add_argument("--steps", type=int, nargs="+", default=[8, 15])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.rois, 256 * 14 * 14)
    block = block_evaluation(args.rois, args.repeats)
    rows = []
    for name in sorted(SOLVERS):
        for steps in args.steps:
            overhead = solver_overhead(name, x, steps, args.repeats)
            rows.append([name, steps, f"{1000 * overhead:.1f}", f"{overhead / block:.2f}"])
    print(f"{args.rois} RoIs x 256 x 14 x 14, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"one IFR block evaluation: {1000 * block:.0f} ms")
    print(tabulate(rows, headers=["solver", "steps", "overhead ms / step", "overhead / block evaluation"],
                   tablefmt="pipe"))


if __name__ == "__main__":
    main()
