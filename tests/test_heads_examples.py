"""The examples of the other heads' integrations run end to end (a few iterations, unrolled then
implicit, evaluated on two images, predictions drawn), so that they cannot rot."""
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
