"""pods_analyze: parameter counts are the modules' sums, FLOPs match the analytic count of a 3x3 conv, the
IFR solve's FLOPs grow linearly with its steps, and the folder scripts print the tables."""
import os
import shutil
import stat
import subprocess
import sys

import pytest
import torch

from ifr.deq import EquilibriumRefinement, IFRBlock, SolverConfig
from ifr.modeling.mask_head import ConvUpsampleMaskHead
from ifr.tools import analyze_model
from ifr.tools.analyze_model import (block_evaluation_flops, count_parameters, implicit_solve_flops, mask_head_cost,
                                     model_components, padded_test_size)
from ifr.tools.experiment import load_experiment

from helpers import FOLDERS, ROOT, TINY

# A small full model (every component present) that builds and runs in a second.
SMALL = [*TINY, "MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
         "MODEL.ROI_HEADS.NUM_CLASSES", "3", "MODEL.RPN.POST_NMS_TOPK_TEST", "50"]
SMALL_TEST_SIZE = ["INPUT.AUG.TEST_PIPELINES",
                   "[('ResizeShortestEdge', {'short_edge_length': 64, 'max_size': 128, 'sample_style': 'choice'})]"]


def _small_model(folder: str):
    cfg, build_model = load_experiment(os.path.join(ROOT, FOLDERS[folder]))
    cfg.merge_from_list([*SMALL, "MODEL.WEIGHTS", "''"])
    return cfg, build_model(cfg).eval()


@pytest.mark.parametrize("folder", sorted(FOLDERS))
def test_component_parameters_add_up_to_the_model(folder):
    cfg, model = _small_model(folder)
    components = model_components(cfg, model, (64, 96))
    head = model.roi_heads.mask_head
    cost = mask_head_cost("x", head, 3, cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION, 4.0)
    counted = sum(p for _, p, _, _ in components) + cost.parameters
    assert counted == sum(p.numel() for p in model.parameters())
    assert sum(p for _, p, _ in cost.parts) == cost.parameters == sum(p.numel() for p in head.parameters())
    trainable = sum(t for _, _, t, _ in components) + count_parameters(head)[1]
    assert trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_a_3x3_conv_costs_two_flops_per_multiply_add_per_roi():
    head = ConvUpsampleMaskHead(in_channels=16, conv_dim=8, num_conv=2, num_classes=3).eval()
    rois, side = 5, 14
    cost = mask_head_cost("conv", head, rois, side, None)
    parts = {name: flops for name, _, flops in cost.parts}
    assert parts["mask_fcn1"] == 2 * 16 * 8 * 9 * side * side * rois
    assert parts["mask_fcn2"] == 2 * 8 * 8 * 9 * side * side * rois
    # deconv: each input pixel writes a 2x2 patch of every output channel; predictor: a 1x1 conv at 28 x 28.
    assert parts["deconv"] == 2 * 8 * 8 * 4 * side * side * rois
    assert parts["predictor"] == 2 * 8 * 3 * (2 * side) ** 2 * rois


@pytest.mark.parametrize("solver", ["broyden", "anderson", "fixed_point"])
def test_the_implicit_solve_costs_one_block_evaluation_per_step(solver):
    block = IFRBlock(8, num_groups=4, weight_norm=True).eval()
    refinement = EquilibriumRefinement(block, mode="implicit", solver=SolverConfig(solver, max_iter=15, tol=1e-4))
    x = torch.randn(3, 8, 14, 14)
    one = block_evaluation_flops(refinement, x)
    assert one == 2 * (2 * 8 * 8 * 9 * 14 * 14 * 3)  # two 3x3 convs, no bias
    for steps in (1, 2, 5, 9):
        block_flops, solver_flops = implicit_solve_flops(refinement, x, steps)
        assert block_flops == (1 + steps) * one
        assert solver_flops >= 0
    # Plain iteration has no linear algebra of its own; Broyden and Anderson combine stored iterates.
    assert (solver_flops == 0) == (solver == "fixed_point")


def test_the_reported_implicit_cost_is_linear_in_the_mean_steps():
    block = IFRBlock(8, num_groups=4, weight_norm=True)
    refinement = EquilibriumRefinement(block, mode="scheduled", num_unrolled=4, pretrained_steps=0,
                                       solver=SolverConfig("fixed_point", max_iter=15, tol=1e-4))
    from ifr.modeling.mask_head import RefinementMaskHead
    head = RefinementMaskHead(refinement, conv_dim=8, num_classes=3).eval()
    costs = [mask_head_cost("ifr", head, 4, 14, steps).features_flops for steps in (2.0, 4.0, 6.0)]
    assert costs[2] - costs[1] == pytest.approx(costs[1] - costs[0])
    one = block_evaluation_flops(refinement, torch.randn(4, 8, 14, 14))
    assert costs[0] == pytest.approx(3 * one)  # fixed-point iteration has no linear algebra of its own


def test_the_input_size_is_the_folder_test_resize_padded():
    cfg, _ = load_experiment(os.path.join(ROOT, FOLDERS["ifr"]))
    assert padded_test_size(cfg, 480, 640, 32) == (800, 1088)  # 800 x 1067, padded to a multiple of 32
    assert padded_test_size(cfg, 400, 1200, 32) == (448, 1344)  # the long edge capped at 1333


def test_the_report_names_the_paper_fraction_and_the_measured_one(capsys):
    analyze_model.main(["--experiment", os.path.join(ROOT, FOLDERS["ifr"]), "--rois", "3", *SMALL, *SMALL_TEST_SIZE])
    out = capsys.readouterr().out
    for heading in ("| component", "| backbone (ResNet trunk)", "| FPN", "| RPN head", "| box head", "| mask head (ifr",
                    "| refinement.block.conv1", "| implicit solve at", "| unrolled form (4 evaluations)", "| conv "):
        assert heading in out
    # CONV_DIM 32: the block's two convs (9,216 weights each) + weight-norm scales (32 each) + 3 GroupNorms
    # (64 each) against four convs with biases (9,248 each).
    block, stack = 2 * (9216 + 32) + 3 * 64, 4 * 9248
    assert "30% of the mask head's parameters" in out
    assert f"feature layers hold {block:,} parameters, {block / stack:.1%} of the 4-conv stack's {stack:,}" in out


def test_steps_can_be_given(capsys):
    analyze_model.main(["--experiment", os.path.join(ROOT, FOLDERS["ifr"]), "--rois", "2", "--steps", "7.5", *SMALL,
                        *SMALL_TEST_SIZE])
    out = capsys.readouterr().out
    assert "steps: given with --steps" in out and "| implicit solve at 7.50 steps / RoI" in out


def test_rois_must_be_positive(capsys):
    with pytest.raises(SystemExit) as exit_info:
        analyze_model.main(["--experiment", os.path.join(ROOT, FOLDERS["ifr"]), "--rois", "0", *SMALL])
    assert exit_info.value.code == 2 and "--rois must be at least 1" in capsys.readouterr().err


def test_steps_are_measured_on_the_detections_of_given_images(tmp_path, val_subset, capsys):
    """--input: the model runs on the images and the solve's mean steps per detected RoI are reported."""
    from ifr.data import get_dataset_dicts

    cfg, model = _small_model("ifr")
    weights = tmp_path / "model.pth"
    torch.save({"model": model.state_dict()}, weights)
    image = get_dataset_dicts(val_subset)[0]["file_name"]
    analyze_model.main(["--experiment", os.path.join(ROOT, FOLDERS["ifr"]), "--rois", "3", "--input", image,
                        *SMALL, *SMALL_TEST_SIZE, "MODEL.WEIGHTS", str(weights),
                        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"])
    out = capsys.readouterr().out
    assert "RoIs detected in 1 image(s)" in out and "| implicit solve at" in out


def test_the_folder_script_prints_the_tables_from_a_plain_shell(tmp_path):
    """pods_analyze.sh through scripts/pods.sh, with a pods_analyze on PATH that runs this checkout's module
    (the console script of an installed checkout does the same)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "pods_analyze"
    tool.write_text(f"#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} -m ifr.tools.analyze_model \"$@\"\n")
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    script = os.path.join(ROOT, FOLDERS["weight_sharing"], "pods_analyze.sh")
    done = subprocess.run(["sh", script, "--rois", "2", *SMALL, *SMALL_TEST_SIZE], cwd=tmp_path,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin"}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "| mask head (weight_sharing, 2 RoIs)" in done.stdout and "| unrolled form (4 evaluations)" in done.stdout
    help_text = subprocess.run(["sh", script, "--help"], cwd=tmp_path, env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
                               capture_output=True, text=True, timeout=600)
    assert help_text.returncode == 0 and "usage: pods_analyze" in help_text.stdout


def test_without_an_install_the_script_says_in_one_line_what_to_run(tmp_path):
    checkout = tmp_path / "checkout"
    shutil.copytree(os.path.join(ROOT, "scripts"), checkout / "scripts")
    shutil.copytree(os.path.join(ROOT, FOLDERS["cascade"]), checkout / "experiment")
    done = subprocess.run(["sh", str(checkout / "experiment" / "pods_analyze.sh"), "--help"], cwd=tmp_path,
                          env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert "pods_analyze is not installed" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_every_folder_has_the_analyze_script_and_the_console_script_is_declared():
    for folder in FOLDERS.values():
        assert os.path.isfile(os.path.join(ROOT, folder, "pods_analyze.sh"))
    with open(os.path.join(ROOT, "setup.py")) as f:
        assert '"pods_analyze=ifr.tools.analyze_model:main"' in f.read()
