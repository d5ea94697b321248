"""Inference time of the ablation's trained models side by side: IFR (plain and Jacobian-regularised)
at its default and at reduced F_THRES, against the 4-conv head, with mask AP and solver steps per RoI.

    python benchmarks/trained_heads_bench.py [--dataset hard] [--seeds 0] [--f-thres 15 5]
        [--variants conv ifr ifr_jac1 ifr_jac5] [--repeats 2] [--images N] [--output DIR]

It loads ``model_final.pth`` of each finished run of ``benchmarks/ablation.py`` (same ``--output``)
and runs every (model, F_THRES) in turn on the same pre-loaded validation images within each repeat,
so the ratio column compares times measured side by side (the model's forward only; data loading
and the COCO evaluation are outside the timed part). Per model it also reports the forward solver
steps per RoI, the RoIs per image and how many of them were solved (identical RoIs share one
solve), box and mask AP at that F_THRES (from the first repeat), on whatever machine it runs
(``MODEL.DEVICE`` of the runs: cpu).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

import torch
from ablation import DATASETS, SolverSteps, run_config
from tabulate import tabulate

from ifr.data import build_test_loader
from ifr.engine import Checkpointer
from ifr.engine.defaults import build_evaluator, setup_logger
from ifr.paths import output_root


def load_run(root: str, dataset: str, variant: str, seed: int):
    """(config, model in eval mode) of a finished ablation run, or None if it has no model_final.pth."""
    folder = os.path.join(root, dataset, variant, f"seed{seed}")
    weights = os.path.join(folder, "model_final.pth")
    if not os.path.isfile(weights):
        return None
    config, build_model = run_config(dataset, variant, seed, max_iter=1, output_dir=folder)
    model = build_model(config)
    Checkpointer(model, folder).load(weights, strict=True)
    return config, model.eval()


def timed_pass(model, inputs: list, evaluator=None) -> tuple[float, SolverSteps, int]:
    """(model seconds over ``inputs``, the solver step counts, RoIs actually solved)."""
    refinement = getattr(model.roi_heads.mask_head, "refinement", None)
    steps = SolverSteps([refinement])
    solved = 0
    seconds = 0.0
    with torch.no_grad():
        for batch in inputs:
            start = time.perf_counter()
            outputs = model(batch)
            seconds += time.perf_counter() - start
            if refinement is not None and refinement.last_solved is not None:
                solved += refinement.last_solved
            if evaluator is not None:
                evaluator.process(batch, outputs)
    steps.remove()
    return seconds, steps, solved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="hard", choices=sorted(DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--variants", nargs="+", default=["conv", "ifr", "ifr_jac1", "ifr_jac5"])
    parser.add_argument("--f-thres", nargs="+", type=int, default=[15, 5],
                        help="F_THRES values for the IFR models (the first is the default setting)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--images", type=int, default=None, help="only the first N validation images")
    parser.add_argument("--output", default=None, help="the ablation's output folder")
    args = parser.parse_args()
    setup_logger(None)
    root = args.output or os.path.join(output_root(), "ablation")
    rows = []
    for seed in args.seeds:
        models = {}
        for variant in args.variants:
            loaded = load_run(root, args.dataset, variant, seed)
            if loaded is None:
                print(f"skipping {variant} seed {seed}: no finished run in {root}")
                continue
            config, model = loaded
            refinement = getattr(model.roi_heads.mask_head, "refinement", None)
            for f_thres in (args.f_thres if refinement is not None and refinement.mode != "unrolled" else [None]):
                models[(variant, f_thres)] = (config, model)
        if not models:
            continue
        config = next(iter(models.values()))[0]
        val = DATASETS[args.dataset][1]
        inputs = list(build_test_loader(config, val))[:args.images]
        seconds = {key: [] for key in models}
        results = {}
        for repeat in range(args.repeats):
            for key, (config, model) in models.items():
                refinement = getattr(model.roi_heads.mask_head, "refinement", None)
                if key[1] is not None:
                    refinement.solver = dataclasses.replace(refinement.solver, max_iter=key[1])
                # AP and solver counts from the first repeat (the evaluator's bookkeeping is outside the timing)
                evaluator = build_evaluator(config, val, os.path.join(config.OUTPUT_DIR, "trained_heads_bench")) \
                    if repeat == 0 else None
                elapsed, steps, solved = timed_pass(model, inputs, evaluator)
                seconds[key].append(elapsed / len(inputs))
                if evaluator is not None:
                    results[key] = (evaluator.evaluate(), steps, solved)
        base = [s for (variant, _), s in seconds.items() if variant == "conv"]
        for key, times in seconds.items():
            scores, steps, solved = results[key]
            ratios = [t / b for t, b in zip(times, base[0])] if base else []
            rois = steps.rois or None
            rows.append([seed, key[0], key[1] if key[1] is not None else "-", f"{min(times):.3f}",
                         f"{statistics.median(ratios):.2f}" if ratios else "-",
                         f"{steps.roi_steps / rois:.2f}" if rois else "-",
                         f"{rois / len(inputs):.1f}" if rois else "-",
                         f"{solved / len(inputs):.1f}" if rois else "-",
                         f"{scores['bbox']['AP']:.1f}", f"{scores['segm']['AP']:.1f}"])
    print(f"{args.dataset} validation, {args.repeats} repeats, torch threads {torch.get_num_threads()}")
    print(tabulate(rows, headers=["seed", "mask head", "F_THRES", "s / image", "/ conv", "steps / RoI",
                                  "RoIs / image", "solved / image", "box AP", "mask AP"], tablefmt="github"))


if __name__ == "__main__":
    main()
