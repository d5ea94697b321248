"""The examples of the other heads' integrations and their ablation run end to end (a few iterations,
unrolled then implicit, evaluated on two images, predictions drawn), so that they cannot rot."""
import json
import os
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


def test_the_heads_ablation_records_a_run_and_reuses_it_only_with_its_settings(datasets_root, tmp_path, monkeypatch,
                                                                                capsys):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    command = ["heads_ablation.py", "--detectors", "faster_rcnn_v2", "--forms", "ifr", "--seeds", "0",
               "--max-iter", "3", "--val-images", "2", "--output", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", command)
    runpy.run_path(os.path.join(ROOT, "benchmarks", "heads_ablation.py"), run_name="__main__")
    with open(tmp_path / "faster_rcnn_v2" / "ifr" / "seed0" / "results.json") as f:
        result = json.load(f)
    assert result["task"] == "bbox" and result["replaced_parameters"] > 0
    assert result["replaced_flops_per_image"] > 0 and result["solver_steps_per_image"] >= 1
    assert 0 < result["replaced_cpu_seconds_per_image"] < result["cpu_seconds_per_image"]
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", [*command, "--finished-only"])
    runpy.run_path(os.path.join(ROOT, "benchmarks", "heads_ablation.py"), run_name="__main__")
    assert "| faster_rcnn_v2 | ifr " in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", [*command, "--max-iter", "4", "--finished-only"])  # the last --max-iter counts
    runpy.run_path(os.path.join(ROOT, "benchmarks", "heads_ablation.py"), run_name="__main__")
    assert "max_iter 3 -> 4" in capsys.readouterr().out
