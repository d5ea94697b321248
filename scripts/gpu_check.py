"""The device check: everything a first GPU run depends on, in one command that fits in 8 minutes on one GPU.

Steps, each recorded in ``OUT/gpu_check.json`` as soon as it ends (the file is rewritten whole after
every step, so a run that is killed keeps the steps it finished), with its log in ``OUT/<step>.log``:

1. ``environment``: GPU, torch, CUDA, cuDNN, the TF32 switches.
2. ``cuda_tests``: the device-parametrised tests' CUDA cases (``pytest -k cuda``).
3. ``head_agreement``: the full-size IFR mask head on the same RoI features on the CPU and on the GPU (solves
   in IEEE float32), each against a float64 CPU reference.
4. ``train`` (in ``OUT/experiment``, a copy of the IFR folder, so the checkout's ``log`` link stays as it is):
   30 iterations of the full-size R50-FPN IFR Mask R-CNN on the built-in synthetic data, mixed
   precision, in a 1-process NCCL group (torchrun, so DDP wraps the model), both phases of the IFR schedule:
   finite and falling loss, solver statistics logged, checkpoint written.
5. ``test``: ``pods_test`` on that checkpoint, on the GPU.
6. ``benchmarks``: the GPU rows of ``benchmarks/inference_bench.py`` (TF32 off and on) and
   ``benchmarks/training_bench.py`` (float32 and mixed precision).

``--dry-run`` runs the same steps on the CPU at toy size (the test suite does), skipping the benchmarks
(their command lines are checked with ``--help``).

Run: ``bash scripts/gpu_check.sh [--out output/gpu_check] [--dry-run]``; exit status 0 when every step
passed, 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time

from ifr.tools.config_reference import config_leaves
from ifr.utils.atomic import json_writer, write_atomically

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IFR_FOLDER = os.path.join(ROOT, "mask_rcnn.ifr.res50.fpn.coco.multiscale.1x")
# The tests whose CUDA cases the check runs (device-parametrised).
CUDA_TEST_FILES = ["tests/test_block_and_layer.py", "tests/test_solvers.py", "tests/test_mask_heads.py",
                   "tests/test_implicit_backward.py", "tests/test_tta.py", "tests/test_oracle_boxes.py"]


class Report:
    """The results file: one entry per step, written whole after each. ``timeout_scale`` multiplies each
    step's time limit (the limits fit an idle machine; a loaded one needs more)."""

    def __init__(self, out: str, deadline: float, timeout_scale: float = 1.0):
        self.out, self.deadline, self.timeout_scale = out, deadline, timeout_scale
        self.path = os.path.join(out, "gpu_check.json")
        self.data = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "steps": {}}

    def record(self, name: str, entry: dict) -> None:
        self.data["steps"][name] = entry
        self.data["passed"] = all(s["status"] in ("ok", "skipped") for s in self.data["steps"].values())
        write_atomically(self.path, json_writer(self.data, indent=2))
        print(f"[gpu_check] {name}: {entry['status']}" + (f" ({entry['reason']})" if "reason" in entry else ""),
              flush=True)

    def time_left(self) -> float:
        return self.deadline - time.monotonic()


def run_logged(report: Report, name: str, command: list[str], timeout: float, cwd: str = ROOT,
               env: dict | None = None) -> tuple[int, str]:
    """Runs ``command`` with its output in OUT/<name>.log; (exit status, the log's last lines). A command
    still running after ``timeout`` seconds (times the report's scale) is killed: exit status 124, and the
    log's last line says so."""
    log = os.path.join(report.out, f"{name}.log")
    timeout = min(timeout * report.timeout_scale, max(report.time_left(), 1.0))
    with open(log, "w") as f:
        f.write("$ " + " ".join(command) + "\n")
        f.flush()
        try:
            rc = subprocess.run(command, cwd=cwd, env={**os.environ, **(env or {})}, stdout=f,
                                stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = 124
            f.write(f"\n[gpu_check] {name} stopped after its time limit of {timeout:.0f} s (on a loaded machine, "
                    f"give the steps more time with --timeout-scale)\n")
    tail = open(log).read().splitlines()[-15:]
    return rc, "\n".join(tail)


def environment(device: str) -> dict:
    import torch
    import torchvision

    info = {"status": "ok", "python": sys.version.split()[0], "torch": torch.__version__,
            "torchvision": torchvision.__version__, "cuda_available": torch.cuda.is_available(),
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
            "cudnn_conv_fp32_precision": getattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision", None),
            "matmul_fp32_precision": getattr(torch.backends.cuda.matmul, "fp32_precision", None),
            "float32_matmul_precision": torch.get_float32_matmul_precision()}
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["capability"] = list(torch.cuda.get_device_capability())
    if device == "cuda" and not torch.cuda.is_available():
        info.update(status="failed", reason="no CUDA device visible to torch (a CPU build, or no driver)")
    return info


def head_agreement(device: str, channels: int, rois: int) -> dict:
    """The IFR head's mask logits on ``device`` against the CPU's, both in float32 (and each against the
    float64 CPU result, for information: the solves stop at their tolerance, so that is not float32 noise)."""
    import torch

    from ifr.config import RCNNFPNConfig
    from ifr.modeling.mask_head import build_ifr_mask_head

    cfg = RCNNFPNConfig()
    cfg.merge_from_list(["MODEL.DEVICE", device, "MODEL.ROI_HEADS.NUM_CLASSES", "80"])
    torch.manual_seed(0)
    head = build_ifr_mask_head(cfg, in_channels=channels).eval()
    # RoI features as an FPN gives them: per-channel offsets and spreads, not unit Gaussians
    generator = torch.Generator().manual_seed(0)
    x = (torch.randn(rois, channels, 14, 14, generator=generator) * torch.rand(1, channels, 1, 1, generator=generator)
         * 3 + torch.randn(1, channels, 1, 1, generator=generator) * 2)
    with torch.no_grad():
        reference = head.double()(x.double()).float()
        head.float()
        entry, logits = {"status": "ok", "rois": rois, "channels": channels}, {}
        for where in dict.fromkeys(("cpu", device)):  # the CPU only once in a dry run
            moved = head.to(where)
            logits[where] = moved(x.to(where)).cpu()
            stats = moved.refinement.last_stats
            error = ((logits[where] - reference).abs().max() / reference.abs().max()).item()
            entry[where] = {"max_rel_error_vs_float64": error, "solver_steps": int(stats.iterations),
                            "converged": float(stats.converged.float().mean())}
    if device != "cpu":
        cpu, gpu = logits["cpu"], logits[device]
        entry["max_rel_difference_cpu_gpu"] = ((gpu - cpu).abs().max() / cpu.abs().max()).item()
        # the same solve in IEEE float32 on both: float32 rounding apart; TF32 in the solve gives ~1e-3
        if entry["max_rel_difference_cpu_gpu"] > 2e-4:
            entry.update(status="failed", reason="the GPU's masks differ from the CPU's by more than float32 noise")
    return entry


def flat_overrides(tree: dict) -> list[str]:
    """A nested override dict as command-line KEY VALUE pairs."""
    return [x for key, value in config_leaves(tree) for x in (key, repr(value))]


def train_overrides(device: str, out: str, dry_run: bool) -> list[str]:
    """The small preset's data and schedule around the folder's full-size model (toy-sized in a dry run)."""
    from ifr.presets import small_model_overrides

    iterations = 4 if dry_run else 30
    preset = small_model_overrides(max_iter=iterations, num_workers=2)
    model = {"DEVICE": device, "WEIGHTS": "", "BACKBONE": {"FREEZE_AT": 0},
             # No ImageNet weights offline: a ResNet-50 with GroupNorm from scratch (FrozenBN at random init overflows)
             "RESNETS": {"DEPTH": 50, "NORM": "GN", "STRIDE_IN_1X1": False},
             "ROI_HEADS": {"NUM_CLASSES": 3},
             "ROI_MASK_HEAD": {"PRETRAINED_STEPS": iterations // 2}}
    pairs = flat_overrides({"MODEL": model, "DATASETS": preset["DATASETS"],
                            "SOLVER": {**preset["SOLVER"], "IMS_PER_BATCH": 2, "IMS_PER_DEVICE": 2,
                                       "CHECKPOINT_PERIOD": iterations, "OPTIMIZER": {"BASE_LR": 0.01}},
                            "DATALOADER": preset["DATALOADER"], "SEED": 0, "OUTPUT_DIR": out,
                            "TEST": {"DETECTIONS_PER_IMAGE": 20 if dry_run else 100}})
    pairs += ["TRAINER.FP16.ENABLED", "True", "TRAINER.WINDOW_SIZE", "1"]
    if dry_run:
        pairs += ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.FPN.OUT_CHANNELS", "32",
                  "MODEL.ROI_BOX_HEAD.FC_DIM", "64", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
                  "MODEL.RPN.BATCH_SIZE_PER_IMAGE", "64", "DATALOADER.NUM_WORKERS", "0",
                  "INPUT.AUG.TRAIN_PIPELINES", "[('ResizeShortestEdge', {'short_edge_length': (64,), 'max_size': 128, "
                                              "'sample_style': 'choice'})]",
                  "INPUT.AUG.TEST_PIPELINES", "[('ResizeShortestEdge', {'short_edge_length': 64, 'max_size': 128, "
                                             "'sample_style': 'choice'})]"]
    else:  # COCO-like input sizes
        pairs += ["INPUT.AUG.TRAIN_PIPELINES", "[('ResizeShortestEdge', {'short_edge_length': (640, 800), "
                                               "'max_size': 1333, 'sample_style': 'range'}), ('RandomFlip', {})]",
                  "INPUT.AUG.TEST_PIPELINES", "[('ResizeShortestEdge', {'short_edge_length': 800, 'max_size': 1333, "
                                              "'sample_style': 'choice'})]"]
    return pairs


def read_training(out: str, dry_run: bool) -> dict:
    metrics_path = os.path.join(out, "metrics.json")
    if not os.path.isfile(metrics_path):
        return {"status": "failed", "reason": "no metrics.json written"}
    metrics = [json.loads(line) for line in open(metrics_path) if line.strip()]
    losses = [m["total_loss"] for m in metrics if "total_loss" in m]
    solver = [m for m in metrics if any(k.startswith("deq/") for k in m)]
    first, last = losses[:5], losses[-5:]
    entry = {"iterations": len(losses), "first_losses": first, "last_losses": last,
             "finite": all(math.isfinite(v) for v in losses),
             "falling": bool(losses) and sum(last) / len(last) < sum(first) / len(first),
             "solver_stats": {k: v for k, v in solver[-1].items() if k.startswith("deq/")} if solver else None,
             "checkpoint": os.path.isfile(os.path.join(out, "model_final.pth"))}
    problems = [what for what, ok in (("non-finite loss", entry["finite"]), ("no solver statistics", solver),
                                      ("no model_final.pth", entry["checkpoint"]),
                                      ("loss not falling", entry["falling"] or dry_run)) if not ok]
    entry["status"] = "failed" if problems else "ok"
    if problems:
        entry["reason"] = ", ".join(problems)
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "output", "gpu_check"), help="results folder")
    parser.add_argument("--dry-run", action="store_true", help="the same steps on the CPU at toy size")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for the whole check (default 470; unlimited in a dry run): steps that would "
                             "start later are recorded as skipped")
    parser.add_argument("--timeout-scale", type=float, default=1.0,
                        help="multiplies each step's time limit (default 1: limits that fit an idle machine; a step "
                             "still running past its limit is stopped and recorded as failed)")
    args = parser.parse_args(argv)
    if not args.timeout_scale > 0:
        parser.error(f"--timeout-scale must be > 0, got {args.timeout_scale}")
    device = "cpu" if args.dry_run else "cuda"
    os.makedirs(args.out, exist_ok=True)
    budget = args.budget if args.budget is not None else (float("inf") if args.dry_run else 470.0)
    report = Report(args.out, time.monotonic() + budget, args.timeout_scale)
    env = {"IFR_DATASETS": os.path.join(args.out, "datasets"), "PYTHONPATH": os.pathsep.join(
        p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)}

    report.record("environment", environment(device))

    tests = ["tests/test_block_and_layer.py"] if args.dry_run else CUDA_TEST_FILES
    rc, tail = run_logged(report, "cuda_tests", [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                                 "-k", "cuda", *tests], timeout=150)
    report.record("cuda_tests", {"status": "ok" if rc == 0 else "failed", "exit_status": rc, "tail": tail,
                                 **({} if rc == 0 else {"reason": f"pytest exited with {rc}"})})

    try:
        entry = head_agreement(device, channels=16 if args.dry_run else 256, rois=8 if args.dry_run else 64)
    except Exception as e:  # recorded, and the check goes on with the next step
        entry = {"status": "failed", "reason": f"{type(e).__name__}: {e}"}
    report.record("head_agreement", entry)

    # Train and test in a copy of the folder, so that its `log` link and anything else a run leaves in
    # its folder stay under OUT instead of replacing the link of the researcher's own run.
    experiment = os.path.join(args.out, "experiment")
    shutil.copytree(IFR_FOLDER, experiment, ignore=shutil.ignore_patterns("log", "output", "__pycache__"),
                    dirs_exist_ok=True)
    train_out = os.path.join(args.out, "train")
    overrides = train_overrides(device, train_out, args.dry_run)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
               "-m", "ifr.tools.train_net", "--overwrite", *overrides]
    rc, tail = run_logged(report, "train", command, timeout=200, cwd=experiment, env=env)
    entry = read_training(train_out, args.dry_run)
    entry.update(exit_status=rc, tail=tail)
    if rc != 0:
        entry.update(status="failed", reason=f"training exited with {rc}")
    report.record("train", entry)

    if entry.get("checkpoint"):
        rc, tail = run_logged(report, "test", [sys.executable, "-m", "ifr.tools.test_net", *overrides,
                                               "DATASETS.TEST", "('synthetic_shapes_val',)", "MODEL.WEIGHTS",
                                               os.path.join(train_out, "model_final.pth")],
                              timeout=120, cwd=experiment, env=env)
        results_path = os.path.join(train_out, "inference", "coco_eval_results.json")
        results = json.load(open(results_path)) if os.path.isfile(results_path) else None
        ok = rc == 0 and results is not None
        report.record("test", {"status": "ok" if ok else "failed", "exit_status": rc, "results": results, "tail": tail,
                               **({} if ok else {"reason": "pods_test failed or wrote no coco_eval_results.json"})})
    else:
        report.record("test", {"status": "failed", "reason": "no checkpoint from the training step"})

    benches = {"inference_tf32_off": ["benchmarks/inference_bench.py", "--tf32", "off", "--images", "4"],
               "inference_tf32_on": ["benchmarks/inference_bench.py", "--tf32", "on", "--images", "4"],
               "training_fp32": ["benchmarks/training_bench.py"],
               "training_fp16": ["benchmarks/training_bench.py", "--fp16"]}
    rows = {}
    for name, command in benches.items():
        arguments = ["--help"] if args.dry_run else [*command[1:], "--device", "cuda"]
        if report.time_left() < 30:
            rows[name] = {"status": "skipped", "reason": "the check's time budget is spent"}
            continue
        rc, tail = run_logged(report, f"bench_{name}", [sys.executable, command[0], *arguments], timeout=150,
                              env={"PYTHONPATH": env["PYTHONPATH"]})
        rows[name] = {"status": "ok" if rc == 0 else "failed", "exit_status": rc, "table": tail}
    failed = [n for n, r in rows.items() if r["status"] == "failed"]
    entry = {"status": "failed" if failed else "ok", "runs": rows}
    if failed:
        entry["reason"] = f"failed: {', '.join(failed)}"
    elif args.dry_run:
        entry["note"] = "dry run: command lines checked with --help, nothing timed"
    report.record("benchmarks", entry)
    print(f"[gpu_check] results: {report.path}")
    return 0 if report.data["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
