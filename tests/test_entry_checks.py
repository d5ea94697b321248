"""What a user passes in is checked where it enters (issue 29, findings 7, 8 and 10): a broken
config.py, out-of-range tool arguments, videos and folders given to the demo, relative --input of
pods_analyze, solves with no step, test-time solves above their tolerance, an upscaling TTA."""
import logging
import os
import shutil
import stat
import subprocess
import sys

import pytest
import torch
from torch import nn

from ifr.config import ConfigError, RCNNFPNConfig
from ifr.deq import EquilibriumRefinement, IFRBlock, SolverConfig
from ifr.evaluation.inference import run_inference
from ifr.modeling.mask_head import build_ifr_mask_head

from helpers import FOLDERS, ROOT


@pytest.fixture
def ifr_log(caplog):
    """The ``ifr`` package's log lines (its logger does not propagate to pytest's handler)."""
    logger = logging.getLogger("ifr")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO)
    yield caplog
    logger.removeHandler(caplog.handler)


def _error(capsys, main, argv) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ERROR: ") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# ---- 7: the project's own message ----

@pytest.mark.parametrize("file, edit, line, error", [
    ("config.py", lambda s: s.replace("_config_dict = dict(", "_config_dict = dict(:", 1), 5, "SyntaxError: invalid syntax"),
    ("config.py", lambda s: s.replace("config = MaskRCNNConfig()", "config = MaskRCNNConfig(1)"), None, "TypeError: "),
    ("net.py", lambda s: s + "\nimport a_module_nobody_has\n", None,
     "ModuleNotFoundError: No module named 'a_module_nobody_has'"),
])
def test_an_experiment_file_that_does_not_import_is_one_message_with_file_line_and_text(
        tmp_path, monkeypatch, capsys, file, edit, line, error):
    from ifr.tools import train_net

    folder = tmp_path / "copied"
    shutil.copytree(os.path.join(ROOT, FOLDERS["ifr"]), folder)
    path = folder / file
    path.write_text(edit(path.read_text()))
    lines = path.read_text().splitlines()
    broken = line or next(i + 1 for i, text in enumerate(lines) if "MaskRCNNConfig(1)" in text or "nobody" in text)
    monkeypatch.chdir(folder)
    err = _error(capsys, train_net.main, [])
    assert err.startswith(f"ERROR: {path}, line {broken}: {lines[broken - 1].strip()}: {error}"), err


@pytest.mark.parametrize("tool, argv, message", [
    ("analyze_model", ["--image-size", "0", "0"], "--image-size is HEIGHT WIDTH in pixels (each at least 1), got 0 0"),
    ("analyze_model", ["--image-size", "480", "-1"], "got 480 -1"),
    ("analyze_model", ["--rois", "0"], "--rois must be at least 1"),
    ("demo", ["--input", "x.png", "--confidence-threshold", "1.5"], "--confidence-threshold is a score between 0 and 1"),
    ("quickstart", ["--max-iter", "-3"], "--max-iter is a number of training iterations (>= 0"),
    ("test_net", ["--start-iter", "-1"], "--start-iter and --end-iter are iterations (>= 0)"),
])
def test_out_of_range_tool_arguments_are_refused_in_one_line(tmp_path, monkeypatch, capsys, tool, argv, message):
    import importlib

    monkeypatch.setenv("IFR_OUTPUT_ROOT", str(tmp_path))
    monkeypatch.chdir(os.path.join(ROOT, FOLDERS["ifr"]))
    err = _error(capsys, importlib.import_module(f"ifr.tools.{tool}").main, argv)
    assert message in err, err


# ---- 8: messages that lead somewhere ----

def test_the_demo_says_to_extract_a_videos_frames_and_names_what_a_folder_skipped(tmp_path, monkeypatch, capsys, caplog):
    from ifr.tools import demo

    (tmp_path / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    err = _error(capsys, demo.main, ["--input", str(tmp_path / "clip.mp4"), "--quickstart"])
    assert f"--input {tmp_path / 'clip.mp4'} is a video" in err and "ffmpeg -i" in err and "--input clip_frames" in err
    folder = tmp_path / "shots"
    folder.mkdir()
    for name in ("a.png", "notes.txt", "take2.MOV"):
        (folder / name).write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="ifr.tools.demo"):
        assert demo.expand_inputs([str(folder)]) == [str(folder / "a.png")]
    assert f"--input {folder}: skipped 2 entries that are not images" in caplog.text
    assert "notes.txt, take2.MOV" in caplog.text and f"{folder / 'take2.MOV'} is a video: extract its frames" in caplog.text


def test_pods_analyze_takes_a_relative_input_from_where_it_is_run(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "pods_analyze"
    tool.write_text(f"#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} -m ifr.tools.analyze_model \"$@\"\n")
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    (tmp_path / "photo.png").write_bytes(b"")  # found here, not in the experiment folder
    done = subprocess.run(["sh", os.path.join(ROOT, FOLDERS["ifr"], "pods_analyze.sh"), "--input", "photo.png",
                           "MODEL.WEIGHTS", ""],
                          cwd=tmp_path, env={"PATH": f"{bin_dir}:/usr/bin:/bin"}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2 and "no such file" not in done.stderr
    assert "pass the weights of the model to inspect: MODEL.WEIGHTS" in done.stderr, done.stderr


# ---- 10: settings that do nothing or cannot work ----

@pytest.mark.parametrize("key", ["F_THRES", "B_THRES"])
def test_a_solve_with_no_step_is_refused_before_the_model_is_built(key):
    cfg = RCNNFPNConfig()
    cfg.MODEL.ROI_MASK_HEAD[key] = 0
    with pytest.raises(ConfigError, match=f"MODEL.ROI_MASK_HEAD.{key} 0: a solve with no step .*at least 1 "
                                          r"\(the default is 15\)"):
        build_ifr_mask_head(cfg, 32)


class _Refiner(nn.Module):
    def __init__(self, max_iter: int):
        super().__init__()
        self.refinement = EquilibriumRefinement(IFRBlock(8, num_groups=4, weight_norm=True), mode="implicit",
                                                solver=SolverConfig("broyden", max_iter=max_iter, tol=1e-12))

    def forward(self, inputs):
        return self.refinement(torch.randn(6, 8, 7, 7))


class _Collect:
    def process(self, inputs, outputs):
        pass


def test_a_test_time_solve_above_its_tolerance_warns_as_in_training(ifr_log):
    run_inference(_Refiner(max_iter=2), [[0], [1]], _Collect(), show_progress=False)
    warning = sorted({r.getMessage() for r in ifr_log.records if "ended above its tolerance" in r.getMessage()})
    assert len(warning) == 1 and warning[0].startswith("refinement: the forward fixed-point solve ended above its "
                                                      "tolerance for 12 of 12 RoIs (100%) in this evaluation (2 batches)")
    assert "raise MODEL.ROI_MASK_HEAD.F_THRES" in warning[0]
    ifr_log.clear()
    model = _Refiner(max_iter=2)
    model.refinement.solver = SolverConfig("broyden", max_iter=30, tol=1.0)  # converges: no word
    run_inference(model, [[0]], _Collect(), show_progress=False)
    assert "ended above its tolerance" not in ifr_log.text


def test_test_time_augmentation_far_above_the_datas_size_is_warned_about_before_compute(val_subset, ifr_log):
    from ifr.engine.defaults import warn_about_tta_upscaling

    cfg = RCNNFPNConfig()
    cfg.DATASETS.TEST = (val_subset,)
    cfg.TEST.AUG.MIN_SIZES = (400, 3200)  # the synthetic shapes are 128 px
    warn_about_tta_upscaling(cfg)
    assert f"TEST.AUG.MIN_SIZES up to 3200 px upscale every image of {val_subset} (short edges at most 128 px) by " \
           "25x" in ifr_log.text and 'TEST.AUG.MIN_SIZES "(64, 128)"' in ifr_log.text
    ifr_log.clear()
    cfg.TEST.AUG.MIN_SIZES = (128, 256, 512)  # up to 4x: a usual multi-scale test
    warn_about_tta_upscaling(cfg)
    assert "upscale" not in ifr_log.text
