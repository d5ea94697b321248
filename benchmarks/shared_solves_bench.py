"""How often identical RoIs occur at test time and what solving them once saves, side by side.

    python benchmarks/shared_solves_bench.py [--experiment cascade_rcnn.ifr.res50.fpn.coco.800size.1x]
        [--repeats 2] [--images N] [KEY VALUE ...]

Runs a trained model of an experiment folder (default: the cascade's quickstart model,
``python -m ifr.tools.quickstart --experiment cascade_rcnn.ifr.res50.fpn.coco.800size.1x``; any other
with ``MODEL.WEIGHTS``) over its DATASETS.TEST images with identical RoIs solved once and with every
RoI solved, in turns within each repeat (timed without the counting, which runs once per mode
beforehand). Reports RoIs per image, distinct RoIs per image, block
evaluations per image (the sum of the solves' per-RoI steps) and the model's time per image both
ways, and checks that both give bit-identical masks.
"""
from __future__ import annotations

import argparse
import time

import torch
from tabulate import tabulate

from ifr.data import build_test_loader
from ifr.deq import distinct_samples
from ifr.modeling.inspection import find_refinement
from ifr.paths import EXPERIMENTS
from ifr.tools.trained_model import load_trained_model


def counted_pass(model, refinement, inputs: list) -> dict:
    """RoIs, distinct RoIs, RoIs solved, block evaluations and masks over ``inputs`` (not timed: the
    counting finds the repeats itself)."""
    counts = {"rois": 0, "distinct": 0, "solved": 0, "evaluations": 0, "masks": []}

    def count(module, args, output) -> None:
        first = distinct_samples(args[0]).first
        counts["rois"] += args[0].shape[0]
        counts["distinct"] += first.numel()
        counts["solved"] += module.last_solved
        steps = module.last_stats.sample_steps
        # a shared solve evaluated the block for its distinct RoIs only
        counts["evaluations"] += int((steps[first] if module.last_solved < args[0].shape[0] else steps).sum())

    hook = refinement.register_forward_hook(count)
    with torch.no_grad():
        counts["masks"] = [model(batch)[0]["instances"]["masks"] for batch in inputs]
    hook.remove()
    return counts


def timed_pass(model, inputs: list) -> float:
    """The model's seconds over ``inputs``."""
    seconds = 0.0
    with torch.no_grad():
        for batch in inputs:
            start = time.perf_counter()
            model(batch)
            seconds += time.perf_counter() - start
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default=EXPERIMENTS["cascade"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--images", type=int, default=None, help="only the first N test images")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides (MODEL.WEIGHTS ...)")
    args = parser.parse_args()
    args.quickstart = not any(key == "MODEL.WEIGHTS" for key in args.opts[::2])
    config, model = load_trained_model(args)
    refinement = find_refinement(model)
    inputs = list(build_test_loader(config, config.DATASETS.TEST[0]))[:args.images]
    modes = (True, False)
    counts, seconds = {}, {share: [] for share in modes}
    for share in modes:
        refinement.share_identical = share
        counts[share] = counted_pass(model, refinement, inputs)
    for _ in range(args.repeats):
        for share in modes:
            refinement.share_identical = share
            seconds[share].append(timed_pass(model, inputs))
    shared, every = counts[True], counts[False]
    identical = all(torch.equal(a, b) for a, b in zip(shared["masks"], every["masks"]))
    images = len(inputs)
    rows = [["identical RoIs solved once" if share else "every RoI solved",
             *(f"{counts[share][k] / images:.1f}" for k in ("rois", "distinct", "solved", "evaluations")),
             f"{min(seconds[share]) / images:.4f}"] for share in modes]
    ratio = min(seconds[True]) / min(seconds[False])
    print(f"{config.DATASETS.TEST[0]}: {images} images, {args.repeats} repeats, torch threads {torch.get_num_threads()}")
    print(tabulate(rows, headers=["", "RoIs / image", "distinct RoIs / image", "solved / image",
                                  "block evaluations / image", "s / image"], tablefmt="github"))
    repeated = 1 - shared["distinct"] / shared["rois"] if shared["rois"] else 0.0
    print(f"time with sharing / without: {ratio:.3f}; RoIs with an identical earlier RoI: {repeated:.1%}; "
          f"masks bit-identical: {identical}")


if __name__ == "__main__":
    main()
