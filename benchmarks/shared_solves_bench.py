"""How often identical RoIs occur at test time and what solving them once saves, side by side.

    python benchmarks/shared_solves_bench.py [--experiment cascade_rcnn.ifr.res50.fpn.coco.800size.1x]
        [--repeats 2] [--images N] [KEY VALUE ...]

Runs a trained model of an experiment folder (default: the cascade's quickstart model,
``python -m ifr.tools.quickstart --experiment cascade_rcnn.ifr.res50.fpn.coco.800size.1x``; any other
with ``MODEL.WEIGHTS``) over its DATASETS.TEST images with identical RoIs solved once and with every
RoI solved, in turns within each repeat. Reports RoIs per image, distinct RoIs per image, block
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


def one_pass(model, refinement, inputs: list) -> dict:
    """Model seconds, RoIs, distinct RoIs, block evaluations and masks over ``inputs``."""
    counts = {"rois": 0, "distinct": 0, "solved": 0, "evaluations": 0, "seconds": 0.0, "masks": []}

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
        for batch in inputs:
            start = time.perf_counter()
            outputs = model(batch)
            counts["seconds"] += time.perf_counter() - start
            counts["masks"].append(outputs[0]["instances"]["masks"])
    hook.remove()
    return counts


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
    runs = {True: [], False: []}
    for _ in range(args.repeats):
        for share in (True, False):
            refinement.share_identical = share
            runs[share].append(one_pass(model, refinement, inputs))
    shared, every = runs[True][0], runs[False][0]
    identical = all(torch.equal(a, b) for a, b in zip(shared["masks"], every["masks"]))
    images = len(inputs)
    rows = []
    for share, passes in runs.items():
        seconds = min(p["seconds"] for p in passes) / images
        rows.append(["identical RoIs solved once" if share else "every RoI solved", f"{passes[0]['rois'] / images:.1f}",
                     f"{passes[0]['distinct'] / images:.1f}", f"{passes[0]['solved'] / images:.1f}",
                     f"{passes[0]['evaluations'] / images:.1f}", f"{seconds:.4f}"])
    ratio = min(p["seconds"] for p in runs[True]) / min(p["seconds"] for p in runs[False])
    print(f"{config.DATASETS.TEST[0]}: {images} images, {args.repeats} repeats, torch threads {torch.get_num_threads()}")
    print(tabulate(rows, headers=["", "RoIs / image", "distinct RoIs / image", "solved / image",
                                  "block evaluations / image", "s / image"], tablefmt="github"))
    repeated = 1 - shared["distinct"] / shared["rois"] if shared["rois"] else 0.0
    print(f"time with sharing / without: {ratio:.3f}; RoIs with an identical earlier RoI: {repeated:.1%}; "
          f"masks bit-identical: {identical}")


if __name__ == "__main__":
    main()
