"""Test-time compute knob: one IFR checkpoint evaluated with several fixed-point solve settings, as a
table of mask AP and inference time per image, to pick the accuracy / time trade-off.

    cd mask_rcnn.ifr.res50.fpn.coco.multiscale.1x
    python -m ifr.tools.compute_knob MODEL.WEIGHTS model_final.pth [--settings broyden:8:1e-5 unrolled:4 ...]
    python -m ifr.tools.compute_knob --quickstart       # the quickstart's trained model

A setting is ``SOLVER:MAX_ITER:TOL`` (a solver of ``ifr.deq.SOLVERS``, relative tolerance) or
``unrolled:N`` (the block applied N times from zero: the weight-sharing form, on the same weights).
Each setting's masks are compared, instance by instance, with those of a tight reference solve
(``--reference``, default broyden:100:1e-6): the table gives the minimum and mean mask IoU. Each
setting's COCO output goes to ``OUTPUT_DIR/compute_knob/<setting>``.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
from pycocotools import mask as mask_util
from tabulate import tabulate

from ifr.data import build_test_loader, check_datasets
from ifr.deq import EquilibriumRefinement, SolverConfig
from ifr.engine.defaults import build_evaluator, evaluated_tasks
from ifr.errors import UserError
from ifr.evaluation import run_inference
from ifr.modeling.inspection import find_refinement

from .experiment import run_reporting_user_errors
from .trained_model import add_model_arguments, load_trained_model, parse_tool_arguments

# A solve to relative residual 1e-6, which the step limit does not cut short on trained heads.
REFERENCE_SETTING = "broyden:100:1e-6"
# The IFR folders' setting first: the table's times are relative to the first row.
DEFAULT_SETTINGS = ("broyden:15:1e-4", "broyden:2:1e-4", "broyden:4:1e-4", "broyden:8:1e-4", "broyden:15:1e-5",
                    "anderson:15:1e-4", "fixed_point:15:1e-4", "broyden_cvpods:15:1e-5", "unrolled:4")


@dataclass(frozen=True)
class SolveSetting:
    """How the refinement is computed at test time: a solver configuration, or ``unrolled`` steps."""

    name: str
    solver: SolverConfig | None = None
    unrolled_steps: int = 0

    @classmethod
    def parse(cls, text: str) -> "SolveSetting":
        parts = text.split(":")
        try:
            if parts[0] == "unrolled" and len(parts) == 2:
                return cls(text, unrolled_steps=int(parts[1]))
            if len(parts) == 3:
                return cls(text, solver=SolverConfig(parts[0], max_iter=int(parts[1]), tol=float(parts[2]),
                                                     stop_mode="rel"))
        except ValueError as e:
            raise UserError(f"setting {text!r}: {e}") from None
        raise UserError(f"setting {text!r}: write SOLVER:MAX_ITER:TOL (e.g. broyden:8:1e-5) or unrolled:N")

    @contextlib.contextmanager
    def applied(self, refinement: EquilibriumRefinement):
        """The refinement computes with this setting inside the block, as before after it."""
        saved = (refinement.mode, refinement.num_unrolled, refinement.solver)
        if self.solver is not None:
            refinement.mode, refinement.solver = "implicit", self.solver
        else:
            refinement.mode, refinement.num_unrolled = "unrolled", self.unrolled_steps
        try:
            yield
        finally:
            refinement.mode, refinement.num_unrolled, refinement.solver = saved


class MaskRecorder:
    """Passes outputs on to ``evaluator`` and keeps each image's predicted masks as RLEs."""

    def __init__(self, evaluator):
        self.evaluator = evaluator
        self.masks: dict[int, list] = {}

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        self.evaluator.process(inputs, outputs)
        for x, out in zip(inputs, outputs):
            masks = out["instances"]["masks"].cpu().numpy().astype(np.uint8)
            self.masks[x["image_id"]] = mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0)))


def instance_mask_ious(masks: dict[int, list], reference: dict[int, list]) -> list[float]:
    """IoU of every instance's mask with the same instance's mask in ``reference`` (the boxes, and so
    the instances, do not depend on the mask head's solve; two empty masks count as IoU 1)."""
    ious = []
    for image_id, rles in masks.items():
        ref = reference[image_id]
        if len(rles) != len(ref):
            raise RuntimeError(f"image {image_id}: {len(rles)} detections, {len(ref)} in the reference")
        for a, b in zip(rles, ref):
            empty = mask_util.area(a) == 0 and mask_util.area(b) == 0
            ious.append(1.0 if empty else float(mask_util.iou([a], [b], [0])[0][0]))
    return ious


def compute_knob(cfg, model, settings: list[SolveSetting], reference: SolveSetting,
                 show_progress: bool = False) -> list[dict]:
    """Evaluates ``model`` on DATASETS.TEST[0] once per setting and once with ``reference`` (a tight
    solve); one row per setting with mask AP, mean solver steps per image, model time per image and
    the per-instance mask IoU with the reference's masks (minimum and mean), the reference last."""
    refinement = find_refinement(model)
    dataset = cfg.DATASETS.TEST[0]
    steps: list[int] = []

    def count_steps(module, inputs, output):
        if inputs[0].shape[0] > 0:
            stats = module.last_stats
            steps.append(stats.iterations if stats is not None else module.num_unrolled)

    def evaluate_with(setting: SolveSetting) -> tuple[dict, dict[int, list]]:
        loader = build_test_loader(cfg, dataset)
        recorder = MaskRecorder(build_evaluator(cfg, dataset, os.path.join(cfg.OUTPUT_DIR, "compute_knob",
                                                                           setting.name.replace(":", "_"))))
        recorder.evaluator.reset()
        steps.clear()
        with setting.applied(refinement):
            timing = run_inference(model, loader, recorder, show_progress)
        results = recorder.evaluator.evaluate()
        return {"setting": setting.name, "mask AP": results.get("segm", {}).get("AP", math.nan),
                "mask AP75": results.get("segm", {}).get("AP75", math.nan),
                "solver steps": sum(steps) / max(len(steps), 1), "s / image": timing.compute_per_image}, recorder.masks

    with torch.no_grad():  # warm-up (allocator, thread pools), so the first row is not charged for it
        model.eval()(next(iter(build_test_loader(cfg, dataset))))
    hook = refinement.register_forward_hook(count_steps)
    try:
        reference_row, reference_masks = evaluate_with(reference)
        rows = []
        for setting in settings:
            row, masks = evaluate_with(setting)
            ious = instance_mask_ious(masks, reference_masks) or [1.0]
            rows.append({**row, "min IoU": min(ious), "mean IoU": sum(ious) / len(ious)})
    finally:
        hook.remove()
    reference_row["setting"] = f"{reference.name} (reference)"
    return rows + [{**reference_row, "min IoU": 1.0, "mean IoU": 1.0}]


def format_rows(rows: list[dict]) -> str:
    base = rows[0]["s / image"]
    table = [[r["setting"], f"{r['mask AP']:.1f}", f"{r['mask AP75']:.1f}", f"{r['min IoU']:.3f}",
              f"{r['mean IoU']:.4f}", f"{r['solver steps']:.1f}", f"{r['s / image']:.3f}",
              f"{r['s / image'] / base:.2f}"] for r in rows]
    return tabulate(table, headers=["setting", "mask AP", "mask AP75", "min mask IoU vs ref", "mean mask IoU vs ref",
                                    "solver steps / image", "s / image", f"time vs {rows[0]['setting']}"],
                    tablefmt="pipe")


def run(args) -> None:
    settings = [SolveSetting.parse(s) for s in args.settings]
    config, model = load_trained_model(args)
    if not config.DATASETS.TEST:
        raise UserError("DATASETS.TEST is empty: name a registered dataset to evaluate on")
    check_datasets(config.DATASETS.TEST[:1], config.MODEL.ROI_HEADS.NUM_CLASSES, evaluated_tasks(config))
    rows = compute_knob(config, model, settings, SolveSetting.parse(args.reference), show_progress=not args.no_progress)
    print(format_rows(rows))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=list(DEFAULT_SETTINGS),
                        help=f"solve settings (default: {' '.join(DEFAULT_SETTINGS)})")
    parser.add_argument("--reference", default=REFERENCE_SETTING,
                        help=f"the tight solve masks are compared with (default {REFERENCE_SETTING})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_arguments(parser)
    run_reporting_user_errors(run, parse_tool_arguments(parser, argv, "settings"))


if __name__ == "__main__":
    main()
