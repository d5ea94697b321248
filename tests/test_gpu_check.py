"""The device check's CPU dry run: every step of ``scripts/gpu_check.sh`` runs from a plain shell, at toy
size on the CPU, and writes one whole results file."""
import importlib.util
import json
import os
import subprocess
import sys
import time

from helpers import ROOT

# The dry run's steps take a few minutes on an idle 2-core machine; the suite runs it on loaded ones too, so
# each step gets this many times its time limit. A step that hangs is still stopped at its (scaled) limit.
TIMEOUT_SCALE = 3
STEP_LIMITS_S = 150 + 200 + 120 + 4 * 150  # cuda_tests, train, test, the four benchmarks' --help


def _gpu_check_module():
    spec = importlib.util.spec_from_file_location("gpu_check", os.path.join(ROOT, "scripts", "gpu_check.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_step_past_its_scaled_time_limit_is_stopped_and_says_so(tmp_path):
    gpu_check = _gpu_check_module()
    report = gpu_check.Report(str(tmp_path), time.monotonic() + 600, timeout_scale=0.01)
    started = time.monotonic()
    rc, tail = gpu_check.run_logged(report, "hang", [sys.executable, "-c", "import time; time.sleep(60)"],
                                    timeout=100)
    assert rc == 124 and time.monotonic() - started < 30
    assert "hang stopped after its time limit of 1 s" in tail and "--timeout-scale" in tail


def test_gpu_check_dry_run_passes_every_step_and_writes_one_results_file(tmp_path):
    out = tmp_path / "check"
    done = subprocess.run(["bash", os.path.join(ROOT, "scripts", "gpu_check.sh"), "--dry-run", "--out", str(out),
                           "--timeout-scale", str(TIMEOUT_SCALE)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT_SCALE * STEP_LIMITS_S + 120)
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
    # train and test ran in a copy of the folder under --out, whose `log` link names the training's output
    assert os.path.realpath(out / "experiment" / "log") == str(out / "train")
