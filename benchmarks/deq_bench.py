"""Benchmark of the IFR fixed-point core at mask-head shapes.

1. Forward solvers: iterations and time to reach a relative tolerance, for each solver.
2. Training step (forward + backward): implicit vs unrolled at 4, 15 and 30 iterations, with the
   peak memory of the step (CUDA: max allocated; CPU: peak RSS growth of a fresh process per
   configuration) and the bytes autograd keeps for backward.

Run: ``python benchmarks/deq_bench.py [--rois 100] [--device cpu|cuda]``. Absolute times on a shared
machine are noisy; read the ratio columns, which are measured side by side in one run.
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


def solver_rows(rois: int, device: str, tols: list[float], max_iter: int) -> list[dict]:
    block, x = _inputs(rois, device)
    f = lambda z: block(z, x)
    rows = []
    with torch.no_grad():
        f(torch.zeros_like(x))  # warm-up
        for tol in tols:
            for name in sorted(SOLVERS):
                _sync(device)
                start = time.perf_counter()
                _, stats = SolverConfig(name, max_iter=max_iter, tol=tol).solve(f, torch.zeros_like(x))
                _sync(device)
                rows.append({"solver": name, "tol": tol, "iterations": stats.iterations,
                             "converged": stats.summary()["converged_fraction"],
                             "time": time.perf_counter() - start})
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


def print_tables(solvers: list[dict], training: list[dict], rois: int, device: str) -> None:
    print(f"## Forward solve, {rois} RoIs x 256 x 14 x 14, {device}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}\n")
    print("| rel. tol | solver | iterations | converged | time (s) | time / fixed_point |")
    print("|---|---|---|---|---|---|")
    for row in solvers:
        ref = next(r for r in solvers if r["tol"] == row["tol"] and r["solver"] == "fixed_point")
        print(f"| {row['tol']:g} | {row['solver']} | {row['iterations']} | {row['converged']:.0%} "
              f"| {row['time']:.2f} | {row['time'] / ref['time']:.2f} |")
    print(f"\n## Training step (forward + backward), {rois} RoIs, {device}\n")
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
    parser.add_argument("--worker", nargs=2, metavar=("MODE", "ITERATIONS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(training_step(args.worker[0], int(args.worker[1]), args.rois, args.device)))
        return
    solvers = solver_rows(args.rois, args.device, args.tols, args.max_iter)
    training = training_rows(args.rois, args.device, args.iterations)
    print_tables(solvers, training, args.rois, args.device)


if __name__ == "__main__":
    main()
