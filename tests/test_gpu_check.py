"""The device check's CPU dry run: every step of ``scripts/gpu_check.sh`` runs from a plain shell, at toy
size on the CPU, and writes one whole results file."""
import json
import os
import subprocess

from helpers import ROOT


def test_gpu_check_dry_run_passes_every_step_and_writes_one_results_file(tmp_path):
    out = tmp_path / "check"
    done = subprocess.run(["bash", os.path.join(ROOT, "scripts", "gpu_check.sh"), "--dry-run", "--out", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.load(open(out / "gpu_check.json"))
    steps = report["steps"]
    assert list(steps) == ["environment", "cuda_tests", "head_agreement", "train", "test", "benchmarks"]
    assert report["passed"] and all(s["status"] == "ok" for s in steps.values()), steps
    assert {"torch", "cuda", "cudnn", "cudnn_conv_fp32_precision"} <= set(steps["environment"])
    agreement = steps["head_agreement"]["cpu"]
    assert agreement["solver_steps"] > 0 and agreement["max_rel_error_vs_float64"] < 1e-3
    train = steps["train"]
    assert train["iterations"] == 4 and train["finite"] and train["checkpoint"]
    # both phases of the IFR schedule ran: the implicit one logs its solves
    assert train["solver_stats"]["deq/mask_head.refinement/forward_iterations"] > 0
    assert set(steps["test"]["results"]) == {"bbox", "segm"}
    assert set(steps["benchmarks"]["runs"]) == {"inference_tf32_off", "inference_tf32_on", "training_fp32",
                                                "training_fp16"}
    assert not [name for name in os.listdir(out) if name.endswith(".tmp")]
