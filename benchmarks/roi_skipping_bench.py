"""Solving only the RoIs that have not converged yet vs evaluating every RoI at every step.

The IFR block acts on each RoI alone, so the solvers evaluate it on the unconverged RoIs only
(``BlockMap.restricted``); this measures what that saves at the mask-head shape (N RoIs x 256 x
14 x 14, weight-normed block at random initialisation), with RoI features of different scales so
that RoIs converge after different numbers of steps, as detections of different sizes and
contrasts do. Both variants run in turns in one process; the answers are checked to agree.

Run (in the virtual environment): ``python benchmarks/roi_skipping_bench.py [--rois 100] [--tol 1e-4]``
"""
from __future__ import annotations

import argparse
import time

import torch
from tabulate import tabulate

from ifr.deq import BlockMap, IFRBlock, SolverConfig


def timed_solve(config: SolverConfig, f, x: torch.Tensor) -> tuple[float, torch.Tensor, int]:
    with torch.no_grad():
        start = time.perf_counter()
        z, stats = config.solve(f, torch.zeros_like(x))
        return time.perf_counter() - start, z, stats.iterations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rois", type=int, default=100)
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--max-iter", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    block = IFRBlock(256, weight_norm=True)
    x = torch.randn(args.rois, 256, 14, 14) * torch.linspace(0.2, 3.0, args.rois).view(-1, 1, 1, 1)
    restricted = BlockMap(block, x)
    every_roi = lambda z: block(z, x)  # noqa: E731  (no ``restricted``: every RoI at every step)
    rows = []
    for name in ("broyden", "anderson", "fixed_point"):
        config = SolverConfig(name, max_iter=args.max_iter, tol=args.tol)
        times = {"all": [], "skip": []}
        for _ in range(args.repeats):
            t_all, z_all, steps = timed_solve(config, every_roi, x)
            t_skip, z_skip, _ = timed_solve(config, restricted, x)
            times["all"].append(t_all)
            times["skip"].append(t_skip)
        difference = ((z_all - z_skip).flatten(1).norm(dim=1) / z_all.flatten(1).norm(dim=1).clamp_min(1e-12)).max()
        rows.append([name, steps, f"{min(times['all']):.2f}", f"{min(times['skip']):.2f}",
                     f"{min(times['skip']) / min(times['all']):.2f}", f"{difference.item():.1e}"])
    print(f"{args.rois} RoIs x 256 x 14 x 14, rel. tol {args.tol:g}, at most {args.max_iter} steps, cpu, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}; best of {args.repeats}")
    print(tabulate(rows, headers=["solver", "steps", "every RoI (s)", "unconverged RoIs only (s)", "ratio",
                                  "max rel. difference"], tablefmt="pipe"))


if __name__ == "__main__":
    main()
