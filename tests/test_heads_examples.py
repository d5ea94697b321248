"""The examples of the other heads' integrations and their ablation run end to end (a few iterations,
unrolled then implicit, evaluated on two images, predictions drawn), so that they cannot rot."""
import json
import os
import re
import runpy
import sys

import pytest
from PIL import Image

from helpers import ROOT

EXAMPLES = [("keypoint_rcnn.py", [], "keypoints: AP"), ("faster_rcnn_box_head.py", [], "bbox: AP"),
            ("one_stage_towers.py", ["--detector", "retinanet_v2"], "bbox: AP"),
            ("one_stage_towers.py", ["--detector", "fcos", "--form", "weight_sharing"], "bbox: AP")]


@pytest.mark.parametrize("script, extra, printed", EXAMPLES, ids=lambda v: v if isinstance(v, str) else None)
def test_the_example_trains_evaluates_and_draws(script, extra, printed, datasets_root, tmp_path, monkeypatch,
                                                capsys):
    drawing = tmp_path / "predictions.png"
    # 3 iterations: the IFR form's pretrained_steps is int(0.8 * 3) = 2, so the last one solves implicitly
    monkeypatch.setattr(sys, "argv", [script, "--max-iter", "3", "--val-images", "2", "--output", str(drawing),
                                      *extra])
    monkeypatch.syspath_prepend(os.path.join(ROOT, "examples"))
    runpy.run_path(os.path.join(ROOT, "examples", script), run_name="__main__")
    out = capsys.readouterr().out
    assert "iter 1/3" in out and printed in out and "CPU seconds per image" in out
    with Image.open(drawing) as image:
        assert image.size[0] > 300 and image.size[1] > 150  # a grid of 8 drawn validation images


@pytest.mark.parametrize("detector", ["faster_rcnn_v2", "retinanet_v2"])
def test_the_heads_ablation_records_a_run_and_reuses_it_only_with_its_settings(detector, datasets_root, tmp_path,
                                                                                monkeypatch, capsys):
    """RetinaNet's towers solve all levels of a forward at once, in their branch's pre-hook: the run's
    solver steps, tower time and FLOPs must be those of that solve (they once read 0)."""
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    command = ["heads_ablation.py", "--detectors", detector, "--forms", "ifr", "--seeds", "0",
               "--max-iter", "3", "--val-images", "2", "--output", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", command)
    runpy.run_path(os.path.join(ROOT, "benchmarks", "heads_ablation.py"), run_name="__main__")
    with open(tmp_path / detector / "ifr" / "seed0" / "results.json") as f:
        result = json.load(f)
    assert result["task"] == "bbox" and result["replaced_parameters"] > 0
    assert result["replaced_flops_per_image"] > 0 and result["solver_steps_per_image"] >= 1
    assert result["solver_steps_per_sample"] >= 1
    assert 0 < result["replaced_cpu_seconds_per_image"] < result["cpu_seconds_per_image"]
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", [*command, "--finished-only"])
    runpy.run_path(os.path.join(ROOT, "benchmarks", "heads_ablation.py"), run_name="__main__")
    assert re.search(rf"\| {detector} +\| ifr ", capsys.readouterr().out)
    monkeypatch.setattr(sys, "argv", [*command, "--max-iter", "4", "--finished-only"])  # the last --max-iter counts
    runpy.run_path(os.path.join(ROOT, "benchmarks", "heads_ablation.py"), run_name="__main__")
    assert "max_iter 3 -> 4" in capsys.readouterr().out


def test_the_heads_ablation_measures_a_joint_level_solve_once(datasets_root):
    """The probe's FLOPs of a joint solve are those of one ``forward_levels`` call per branch forward,
    not of the per-level calls that only hand its results out (re-run alone, they would solve each level)."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import heads_ablation
    finally:
        sys.path.remove(os.path.join(ROOT, "benchmarks"))
    import torch
    from ifr.presets import torchvision_detectors as detectors

    torch.manual_seed(0)
    model = detectors.build_detector("retinanet_v2", num_classes=len(detectors.class_names("retinanet_v2")))
    replaced = detectors.replace_tower(model, "retinanet_v2", "ifr", pretrained_steps=0)
    model.eval()
    steps = heads_ablation.SolverSteps(detectors.refinements(replaced))
    probe = heads_ablation.ReplacedPartProbe(detectors.replaced_modules(replaced), steps,
                                             heads_ablation.tower_branches(model, replaced))
    with torch.no_grad():
        model([torch.rand(3, 64, 96)])
    probe.remove()
    steps.remove()
    assert [getattr(call, "__name__", None) for call, _ in probe.calls] == ["forward_levels", "forward_levels"]
    assert [len(inputs[0]) for _, inputs in probe.calls] == [5, 5]  # RetinaNet's 5 levels in each solve
    assert steps.rois == 2 and steps.steps >= 2 and probe.seconds > 0  # one joint solve per branch
