"""One-stage head towers on FPN levels: each level solved on its own, or all levels of an image at once.

    python benchmarks/dense_levels_bench.py [--width 256] [--sizes 256 384] [--images 2] [--repeats 3]

RetinaNet's and FCOS's towers run on the 5 FPN levels (strides 8 to 128) of each image. The "ifr" form
(``RefinementTower``, GroupNorm(32), Broyden 15 steps, tol 1e-4, implicit backward) either solves each
level separately (``[tower(x) for x in levels]``, what ``replace_dense_head_towers(levels="separate")``
does: 5 solves of N images each) or all levels of an image at once (``tower.forward_levels(levels)``,
``levels="joint"``: one solve over the concatenation). Same weights and inputs, the two timed in turns
within each repeat (median reported), for inference (no grad, eval mode) and a training step (forward +
backward). Also reports the block evaluations (level-images x steps, summed) of each way.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from tabulate import tabulate

from ifr.deq import RefinementTower

STRIDES = (8, 16, 32, 64, 128)


def fpn_levels(size: int, images: int, width: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Non-negative-ish features at the 5 FPN levels of ``images`` square images of ``size`` pixels."""
    return [torch.randn(images, width, -(-size // s), -(-size // s), generator=generator) for s in STRIDES]


def separate(tower: RefinementTower, levels: list[torch.Tensor]) -> tuple[list[torch.Tensor], int]:
    outs, evaluations = [], 0
    for x in levels:
        outs.append(tower(x, iteration=0))
        evaluations += int(tower.refinement.last_stats.sample_steps.sum())
    return outs, evaluations


def joint(tower: RefinementTower, levels: list[torch.Tensor]) -> tuple[list[torch.Tensor], int]:
    outs = tower.forward_levels(levels, iteration=0)
    return outs, int(tower.refinement.last_stats.sample_steps.sum()) * len(levels)


def timed(way, tower, levels, train: bool) -> tuple[float, int]:
    tower.train(train)
    start = time.perf_counter()
    if train:
        outs, evaluations = way(tower, levels)
        sum(o.square().mean() for o in outs).backward()
    else:
        with torch.no_grad():
            outs, evaluations = way(tower, levels)
    return time.perf_counter() - start, evaluations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 384])
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    tower = RefinementTower(args.width, 4, "ifr", num_groups=32)
    generator = torch.Generator().manual_seed(0)
    rows = []
    for size in args.sizes:
        levels = fpn_levels(size, args.images, args.width, generator)
        for train in (False, True):
            times = {"separate": [], "joint": []}
            evaluations = {}
            for _ in range(args.repeats):
                for name, way in (("separate", separate), ("joint", joint)):
                    seconds, evaluations[name] = timed(way, tower, levels, train)
                    times[name].append(seconds)
            s, j = statistics.median(times["separate"]), statistics.median(times["joint"])
            rows.append([size, "training step" if train else "inference", f"{s:.3f}", f"{j:.3f}", f"{j / s:.2f}",
                         evaluations["separate"], evaluations["joint"]])
            print(rows[-1], flush=True)
    print(tabulate(rows, headers=["image size", "pass", "separate s", "joint s", "joint / separate",
                                  "block evaluations separate", "block evaluations joint"], tablefmt="github"))


if __name__ == "__main__":
    main()
