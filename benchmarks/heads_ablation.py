"""The tower ablation of the torchvision integrations on the built-in data: the explicit tower, the
weight-sharing block and IFR in Keypoint R-CNN's keypoint head, Faster R-CNN v2's box head and the
one-stage detectors' towers, the same small model, schedule and data, several seeds.

    python benchmarks/heads_ablation.py [--detectors keypoint_rcnn faster_rcnn_v2 retinanet_v2]
                                        [--forms explicit weight_sharing ifr] [--seeds 0 1 2]
                                        [--max-iter 200] [--val-images N] [--output DIR] [--finished-only]

Each run is ``ifr.presets.torchvision_detectors``' CPU-sized detector (``fcos`` is a choice too) with its
tower(s) replaced by the form through ``ifr.integrations.torchvision``, trained ``--max-iter`` iterations
at batch 2 (the IFR form unrolled for the first 80%) and evaluated on the validation set. It reports the
task's AP (keypoint AP for Keypoint R-CNN, box AP otherwise) and box AP; the replaced part's parameters
and FLOPs per image (``pods_analyze``'s counter, torch.utils.flop_counter, run on the inputs the part
received during the evaluation, so the IFR form's FLOPs are those of the solves it made, solver included;
for the RoI heads also per RoI, the IFR form's solve at its measured mean steps per RoI, as ``pods_analyze``
counts it, since per image they follow the number of RoIs, for the keypoint head the detections);
CPU seconds per image of the whole model and of the replaced part (``time.process_time``, so the other
jobs of a shared machine do not count; forward passes only); forward solver steps per image and per
sample (RoI; for the one-stage towers, whose levels are solved at once, image); training CPU seconds per
iteration; then the mean and standard deviation over seeds. Each run leaves ``results.json`` in
``DIR/<detector>/<form>/seed<k>`` (default DIR: ``$IFR_OUTPUT_ROOT/heads_ablation``, else
``output/heads_ablation``) with the settings it ran with; a finished run is reused only when they match
the command's, and a run's folder is claimed while it trains, as in ``benchmarks/ablation.py``.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import time

import torch
from tabulate import tabulate

from ablation import SolverSteps, _mean, _mean_std, reused_or_run
from ifr.paths import output_root
from ifr.integrations.torchvision import LevelTower
from ifr.presets import torchvision_detectors as detectors
from ifr.tools.analyze_model import count_flops, count_parameters
from ifr.tools.experiment import run_reporting_user_errors
from ifr.utils.atomic import json_writer, write_atomically

DEFAULT_DETECTORS = ("keypoint_rcnn", "faster_rcnn_v2", "retinanet_v2")
ROI_SIZES = {"keypoint_rcnn": 14, "faster_rcnn_v2": 7}  # the RoI heads' pooled resolution


def flops_per_roi(detector: str, form: str, steps: float | None) -> float | None:
    """FLOPs of the replaced RoI head on one RoI, as ``pods_analyze`` counts a refinement head: the IFR
    form's solve at ``steps`` (the measured mean steps per RoI, rounded; every RoI solved that long).
    Counted on a freshly built head (FLOPs do not depend on the weights). Per image, a RoI head's FLOPs
    follow the number of RoIs it runs on, which for the keypoint head (the detections) differs between
    models; per RoI they do not. None for the one-stage towers, whose samples are FPN levels."""
    if detector not in ROI_SIZES or (form == "ifr" and steps is None):
        return None
    model = detectors.build_detector(detector, num_classes=len(detectors.class_names(detector)))
    head = detectors.replace_tower(model, detector, form, pretrained_steps=0).eval()
    for refinement in detectors.refinements(head) if form == "ifr" else []:
        refinement.solver = dataclasses.replace(refinement.solver, max_iter=max(1, round(steps)), tol=0.0)
    channels = model.backbone.out_channels
    return count_flops(head, torch.zeros(1, channels, ROI_SIZES[detector], ROI_SIZES[detector]))


class ReplacedPartProbe:
    """Records what the replaced tower(s) are called with, the CPU seconds spent in them and their
    forward solver steps (``steps``) while attached (forward pre- and post-hooks).

    A one-stage head's ``LevelTower`` of the "ifr" form with ``levels="joint"`` solves all levels of a
    forward in its branch's pre-hook (``LevelTower.begin``) and returns those results to the per-level
    calls that follow: that solve is timed by two more pre-hooks on the branch, one before ``begin`` and
    one after, recorded as one ``forward_levels`` call, and its steps counted from the tower's refinement
    statistics; the per-level calls are then timed but not recorded (they only hand results out)."""

    def __init__(self, towers: list[torch.nn.Module], steps: SolverSteps, branches: dict | None = None):
        self.calls: list[tuple[object, tuple]] = []
        self.seconds = 0.0
        self._started = 0.0
        self._steps = steps
        self._hooks = []
        for tower in towers:
            self._hooks.append(tower.register_forward_pre_hook(self._enter))
            self._hooks.append(tower.register_forward_hook(self._leave))
        for tower, branch in (branches or {}).items():
            self._hooks.append(branch.register_forward_pre_hook(self._start_joint_solve, prepend=True))
            self._hooks.append(branch.register_forward_pre_hook(functools.partial(self._end_joint_solve, tower)))

    def _enter(self, module, inputs) -> None:
        if not _solves_levels_jointly(module):
            self.calls.append((module, inputs))
        self._started = time.process_time()

    def _leave(self, module, inputs, output) -> None:
        self.seconds += time.process_time() - self._started

    def _start_joint_solve(self, branch, inputs) -> None:
        self._started = time.process_time()

    def _end_joint_solve(self, tower, branch, inputs) -> None:
        if not _solves_levels_jointly(tower):  # the per-level calls do the work (and are timed)
            return
        self.seconds += time.process_time() - self._started
        self.calls.append((tower.forward_levels, (list(inputs[0]),)))
        self._steps.add(tower.refinement.last_stats)

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()

    def flops(self) -> int:
        """FLOPs of every recorded call, run again under the counter."""
        return sum(count_flops(call, *inputs) for call, inputs in self.calls)


def tower_branches(model: torch.nn.Module, replaced) -> dict | None:
    """The one-stage head's branches (``model.head.<name>``) by their replaced tower, whose pre-hooks run
    a joint level solve; None for a RoI head (``replace_tower`` returned one module)."""
    if not isinstance(replaced, dict):
        return None
    return {tower: getattr(model.head, name) for name, tower in replaced.items()}


def _solves_levels_jointly(tower) -> bool:
    """Whether ``tower`` is now a one-stage head's tower solving all levels at once, in evaluation (the
    probe measures the evaluation)."""
    return isinstance(tower, LevelTower) and tower.solves_levels_jointly and not tower.training


def run_settings(detector: str, form: str, seed: int, max_iter: int, val_images: int | None) -> dict:
    """What a run's results depend on."""
    levels = {"levels": "joint"} if form == "ifr" and detector not in ROI_SIZES else {}  # how its towers solve
    return {"detector": detector, "form": form, "seed": seed, "max_iter": max_iter, "batch_size": 2,
            "val_images": val_images, "threads": torch.get_num_threads(), **levels}


def one_run(detector: str, form: str, seed: int, max_iter: int, val_images: int | None, root: str,
            finished_only: bool = False) -> dict | None:
    """The run's results: read when it finished with the same settings, else trained and evaluated
    (None with ``finished_only``, saying why it is left out)."""
    out = os.path.join(root, detector, form, f"seed{seed}")
    settings = run_settings(detector, form, seed, max_iter, val_images)
    return reused_or_run(out, settings, finished_only, lambda why: _train_and_evaluate(
        detector, form, seed, max_iter, val_images, out, settings, why))


def _train_and_evaluate(detector: str, form: str, seed: int, max_iter: int, val_images: int | None, out: str,
                        settings: dict, why: str) -> dict:
    print(f"running {out} ({why})", flush=True)
    torch.manual_seed(seed)
    model = detectors.build_detector(detector, num_classes=len(detectors.class_names(detector)))
    replaced = detectors.replace_tower(model, detector, form, pretrained_steps=int(0.8 * max_iter))
    towers = detectors.replaced_modules(replaced)
    train_seconds = detectors.train(model, detector, max_iter, seed=seed)
    steps = SolverSteps(detectors.refinements(replaced))
    probe = ReplacedPartProbe(towers, steps, tower_branches(model, replaced))
    scores = detectors.evaluate(model, detector, val_images)
    probe.remove()
    steps.remove()
    images = len(detectors.get_dataset_dicts(detectors.DATASETS[detector][1])[:val_images])
    task = "keypoints" if "keypoints" in scores else "bbox"
    result = {"task": task, "AP": scores[task]["AP"], "box_AP": scores["bbox"]["AP"],
              "replaced_parameters": sum(count_parameters(t)[0] for t in towers),
              "replaced_flops_per_image": probe.flops() / images,
              "cpu_seconds_per_image": scores["cpu_seconds_per_image"],
              "replaced_cpu_seconds_per_image": probe.seconds / images,
              "solver_steps_per_image": steps.steps / images if form == "ifr" else None,
              "solver_steps_per_sample": steps.roi_steps / steps.rois if steps.rois else None,
              "train_cpu_seconds_per_iteration": train_seconds / max_iter, "settings": settings}
    write_atomically(os.path.join(out, "results.json"), json_writer(result, indent=1))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--detectors", nargs="+", default=list(DEFAULT_DETECTORS), choices=detectors.DETECTORS)
    parser.add_argument("--forms", nargs="+", default=list(detectors.FORMS), choices=detectors.FORMS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--max-iter", type=int, default=200)
    parser.add_argument("--val-images", type=int, default=None, help="evaluate on the first N validation images")
    parser.add_argument("--output", default=None)
    parser.add_argument("--finished-only", action="store_true", help="report the finished runs only; train none")
    args = parser.parse_args()
    root = args.output or os.path.join(output_root(), "heads_ablation")
    # seed by seed, so that a partial ablation has every form of its first seeds
    runs = {(detector, form, seed): one_run(detector, form, seed, args.max_iter, args.val_images, root,
                                            args.finished_only)
            for detector in args.detectors for seed in args.seeds for form in args.forms}
    rows, per_seed = [], []
    for detector in args.detectors:
        for form in args.forms:
            finished = {seed: runs[detector, form, seed] for seed in args.seeds
                        if runs[detector, form, seed] is not None}
            if not finished:
                continue
            values = list(finished.values())
            task = "keypoint AP" if values[0]["task"] == "keypoints" else "box AP"
            rows.append([detector, form, len(values), task, _mean_std([r["AP"] for r in values]),
                         _mean_std([r["box_AP"] for r in values]), f"{values[0]['replaced_parameters']:,}",
                         _mean([r["replaced_flops_per_image"] / 1e6 for r in values], 1),
                         _mean([f / 1e6 for f in (flops_per_roi(detector, form, r["solver_steps_per_sample"])
                                                  for r in values) if f is not None], 1),
                         _mean([r["cpu_seconds_per_image"] * 1e3 for r in values], 0),
                         _mean([r["replaced_cpu_seconds_per_image"] * 1e3 for r in values], 0),
                         _mean([r["solver_steps_per_image"] for r in values], 1),
                         _mean([r["solver_steps_per_sample"] for r in values], 2),
                         _mean([r["train_cpu_seconds_per_iteration"] for r in values], 2)])
            per_seed.extend([detector, form, seed, f"{r['AP']:.1f}", f"{r['box_AP']:.1f}"]
                            for seed, r in finished.items())
    print(f"{args.max_iter} iterations per run at batch 2, seeds {args.seeds}, "
          f"{torch.get_num_threads()} CPU thread{'s' if torch.get_num_threads() != 1 else ''}")
    print(tabulate(rows, headers=["detector", "tower", "seeds", "task", "AP", "box AP", "tower params",
                                  "tower MFLOPs / image", "/ RoI", "model CPU ms / image", "tower CPU ms / image",
                                  "solver steps / image", "steps / sample", "train CPU s / iter"],
                   tablefmt="github"))
    print("\nPer seed")
    print(tabulate(per_seed, headers=["detector", "tower", "seed", "AP", "box AP"], tablefmt="github"))


if __name__ == "__main__":
    run_reporting_user_errors(lambda _: main(), None)
