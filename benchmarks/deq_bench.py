"""Benchmark of the IFR fixed-point core at mask-head shapes.

1. Forward solvers: iterations and time to reach a relative tolerance, for each solver: on a block at
   random initialisation, and (``--quickstart``) on the trained block of the quickstart checkpoint with
   the RoI features its mask head receives on the built-in validation images. With torchdeq installed
   (optional: ``pip install -e .[bench]``) its solvers run on the same block and tolerance.
2. Training step (forward + backward): implicit vs unrolled at 4, 15 and 30 iterations, with the
   peak memory of the step (CUDA: max allocated; CPU: peak RSS growth of a fresh process per
   configuration) and the bytes autograd keeps for backward. With ``--quickstart`` also: the implicit
   backward's adjoint tolerance against the parameter gradient's error, on the trained block.

Run: ``python benchmarks/deq_bench.py [--rois 100] [--device cpu|cuda] [--quickstart]``.
Absolute times on a shared machine are noisy; read the ratio columns, which are measured side by side
in one run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from contextlib import nullcontext

import torch

from ifr.checkpoint import CheckpointError
from ifr.deq import EquilibriumRefinement, IFRBlock, ImplicitBackward, SolverConfig
from ifr.deq.solvers import SOLVERS


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _inputs(rois: int, device: str, seed: int = 0):
    torch.manual_seed(seed)
    block = IFRBlock(256, weight_norm=True).to(device)
    x = torch.randn(rois, 256, 14, 14, device=device)
    return block, x


def trained_head_inputs(rois: int, device: str):
    """The quickstart checkpoint's IFR block and the first ``rois`` RoI features its mask head receives
    on the built-in validation images (python -m ifr.tools.quickstart must have run)."""
    from ifr.data import build_test_loader
    from ifr.deq import recorded_inputs
    from ifr.modeling.inspection import find_refinement
    from ifr.tools.trained_model import add_model_arguments, load_trained_model

    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    config, model = load_trained_model(parser.parse_args(["--quickstart"]))
    refinement = find_refinement(model)
    with torch.no_grad(), recorded_inputs(refinement) as captured:
        for batch in build_test_loader(config, config.DATASETS.TEST[0]):
            model(batch)
            if sum(len(x) for x in captured) >= rois:
                break
    return refinement.block.to(device), torch.cat(captured)[:rois].to(device)


def _ifr_solver(name: str):
    def solve(f, z0, **settings):
        z, stats = SolverConfig(name, **settings).solve(f, z0)
        return z, stats.iterations
    return solve


def _torchdeq_solvers() -> dict:
    """torchdeq's solvers under our call signature, when torchdeq is installed (an optional extra)."""
    try:
        from torchdeq.solver import get_solver as torchdeq_solver
    except ImportError:
        return {}

    def wrap(key):
        def solve(f, z0, *, max_iter, tol, stop_mode):
            z, _, info = torchdeq_solver(key)(f, z0, max_iter=max_iter, tol=tol, stop_mode=stop_mode)
            return z, int(info["nstep"].max())
        return solve

    return {f"torchdeq.{key}": wrap(key) for key in ("anderson", "broyden", "fixed_point_iter")}


def solver_rows(block, x: torch.Tensor, device: str, tols: list[float], max_iter: int) -> list[dict]:
    """Each solver from z0 = 0 to each relative tolerance: steps, time, and the share of RoIs whose
    relative residual (measured here, the same way for every solver) is below the tolerance."""
    f = lambda z: block(z, x)  # noqa: E731
    solvers = {name: _ifr_solver(name) for name in sorted(SOLVERS)}
    solvers.update(_torchdeq_solvers())
    rows = []
    with torch.no_grad():
        f(torch.zeros_like(x))  # warm-up
        for tol in tols:
            for name, solve in solvers.items():
                _sync(device)
                start = time.perf_counter()
                z, steps = solve(f, torch.zeros_like(x), max_iter=max_iter, tol=tol, stop_mode="rel")
                _sync(device)
                elapsed = time.perf_counter() - start
                fz = f(z)
                relative = (fz - z).flatten(1).norm(dim=1) / fz.flatten(1).norm(dim=1)
                rows.append({"solver": name, "tol": tol, "iterations": steps,
                             "converged": float((relative < tol).float().mean()), "time": elapsed})
    return rows


# The backward solve the other settings' parameter gradients are compared with.
REFERENCE_BACKWARD = ("broyden", 100, 1e-7)


def backward_rows(block, x: torch.Tensor, device: str, settings: list[tuple[str, int, float]]) -> list[dict]:
    """The implicit backward pass with each adjoint solver setting (solver, max_iter, rel. tol), after the
    same forward solve: adjoint steps, backward time, and the parameter gradient's relative error
    against a tight adjoint solve."""
    target = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(device)
    forward = SolverConfig("broyden", max_iter=100, tol=1e-6)

    def run(setting):
        layer = EquilibriumRefinement(block, mode="implicit", solver=forward,
                                      backward=ImplicitBackward(SolverConfig(*setting))).train()
        block.zero_grad()
        loss = ((layer(x) - target) ** 2).mean()
        _sync(device)
        start = time.perf_counter()
        loss.backward()
        _sync(device)
        elapsed = time.perf_counter() - start
        gradient = torch.cat([p.grad.flatten() for p in block.parameters()])
        return gradient, elapsed, layer.backward_strategy.last_stats.iterations

    reference, _, _ = run(REFERENCE_BACKWARD)
    rows = []
    for setting in settings:
        run(setting)  # warm-up
        gradient, elapsed, steps = run(setting)
        rows.append({"setting": ":".join(map(str, setting)), "iterations": steps, "time": elapsed,
                     "error": float((gradient - reference).norm() / reference.norm())})
    return rows


def _current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _PeakRSS:
    """Samples this process's resident memory every millisecond while the block runs.

    (ru_maxrss is no use here: importing torch's CUDA build touches more memory than a training step.)
    """

    def __enter__(self):
        self.baseline = self.peak = _current_rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, _current_rss_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _current_rss_bytes())

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


def training_step(mode: str, iterations: int, rois: int, device: str) -> dict:
    """One forward + backward of the refinement at exactly ``iterations`` iterations (tol = 0)."""
    block, x = _inputs(rois, device)
    solve = SolverConfig("broyden", max_iter=iterations, tol=0.0)
    layer = EquilibriumRefinement(block, mode=mode, num_unrolled=iterations, solver=solve,
                                  backward=ImplicitBackward(solve)).train()
    x.requires_grad_()
    target = torch.randn_like(x)
    saved_storages: dict[int, int] = {}

    def pack(t):
        # Count each storage once: the same weight is saved by every application of the block.
        storage = t.untyped_storage()
        saved_storages[storage.data_ptr()] = storage.nbytes()
        return t

    # Warm-up on a tiny batch (kernel selection, allocator), not counted.
    ((layer(x[:1]) - target[:1]) ** 2).mean().backward()
    block.zero_grad()
    on_gpu = device.startswith("cuda")
    if on_gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    with nullcontext() if on_gpu else _PeakRSS() as rss:
        start = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = layer(x)
        ((out - target) ** 2).mean().backward()
        _sync(device)
        elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() - baseline if on_gpu else rss.growth
    return {"mode": mode, "iterations": iterations, "time": elapsed, "peak_bytes": peak,
            "saved_bytes": sum(saved_storages.values())}


def training_rows(rois: int, device: str, iteration_counts: list[int]) -> list[dict]:
    rows = []
    for iterations in iteration_counts:
        for mode in ("unrolled", "implicit"):
            # A fresh process per configuration, so each peak-RSS reading is its own; glibc is told to
            # return every freed block over 64 KiB to the OS, so that RSS follows live tensor memory.
            env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
            out = subprocess.run(
                [sys.executable, __file__, "--worker", mode, str(iterations), "--rois", str(rois),
                 "--device", device], check=True, capture_output=True, text=True, env=env)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


def _mib(n: int) -> str:
    return f"{n / 2 ** 20:,.0f}"


def print_solver_table(title: str, solvers: list[dict]) -> None:
    print(f"## {title}, {torch.get_num_threads()} threads, torch {torch.__version__}\n")
    print("| rel. tol | solver | iterations | converged | time (s) | time / fixed_point |")
    print("|---|---|---|---|---|---|")
    for row in solvers:
        ref = next(r for r in solvers if r["tol"] == row["tol"] and r["solver"] == "fixed_point")
        print(f"| {row['tol']:g} | {row['solver']} | {row['iterations']} | {row['converged']:.0%} "
              f"| {row['time']:.2f} | {row['time'] / ref['time']:.2f} |")
    print()


def print_backward_table(title: str, rows: list[dict]) -> None:
    print(f"## {title}\n")
    print("| adjoint solve | iterations | backward time (s) | time / first row | gradient rel. error |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['setting']} | {row['iterations']} | {row['time']:.2f} | {row['time'] / rows[0]['time']:.2f} "
              f"| {row['error']:.1e} |")
    print()


def print_training_table(training: list[dict], rois: int, device: str) -> None:
    print(f"## Training step (forward + backward), {rois} RoIs, {device}\n")
    print("| iterations | mode | time (s) | time / unrolled | peak memory (MiB) | peak / unrolled "
          "| autograd saved (MiB) |")
    print("|---|---|---|---|---|---|---|")
    for row in training:
        ref = next(r for r in training if r["iterations"] == row["iterations"] and r["mode"] == "unrolled")
        print(f"| {row['iterations']} | {row['mode']} | {row['time']:.2f} | {row['time'] / ref['time']:.2f} "
              f"| {_mib(row['peak_bytes'])} | {row['peak_bytes'] / ref['peak_bytes']:.2f} "
              f"| {_mib(row['saved_bytes'])} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rois", type=int, default=100)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tols", type=float, nargs="+", default=[1e-3, 1e-4])
    parser.add_argument("--max-iter", type=int, default=100, help="solver step limit for part 1")
    parser.add_argument("--iterations", type=int, nargs="+", default=[4, 15, 30])
    parser.add_argument("--quickstart", action="store_true",
                        help="also solve the quickstart checkpoint's trained block on its RoI features")
    parser.add_argument("--skip-training", action="store_true", help="part 1 only")
    parser.add_argument("--worker", nargs=2, metavar=("MODE", "ITERATIONS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(training_step(args.worker[0], int(args.worker[1]), args.rois, args.device)))
        return
    if args.quickstart:  # loaded first, so a missing checkpoint is reported before the long part
        try:
            trained = trained_head_inputs(args.rois, args.device)
        except CheckpointError as e:
            raise SystemExit(f"--quickstart: {e}; train it with python -m ifr.tools.quickstart "
                             "(or point IFR_OUTPUT_ROOT at the output root of a quickstart run)") from None
    print_solver_table(f"Forward solve, block at random init, {args.rois} RoIs x 256 x 14 x 14, {args.device}",
                       solver_rows(*_inputs(args.rois, args.device), args.device, args.tols, args.max_iter))
    if args.quickstart:
        block, x = trained
        shape = f"{len(x)} RoIs x {x.shape[1]} x {x.shape[2]} x {x.shape[3]}, {args.device}"
        print_solver_table(f"Forward solve, trained quickstart block, {shape}",
                           solver_rows(block, x, args.device, args.tols, args.max_iter))
        settings = [(name, 15, tol) for name in ("broyden", "anderson", "fixed_point") for tol in (1e-6, 1e-4, 1e-3)]
        print_backward_table(f"Implicit backward, trained quickstart block, {shape}; reference: adjoint solve "
                             f"{':'.join(map(str, REFERENCE_BACKWARD))}", backward_rows(block, x, args.device, settings))
    if not args.skip_training:
        print_training_table(training_rows(args.rois, args.device, args.iterations), args.rois, args.device)


if __name__ == "__main__":
    main()
