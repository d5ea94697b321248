"""Training metrics: a per-iteration store and the writers that report it (console, JSON, TensorBoard)."""
from __future__ import annotations

import contextlib
import datetime
import json
import logging
import math
import os
import resource
import statistics
from collections import defaultdict

import torch

from ifr.utils.atomic import open_atomically

logger = logging.getLogger(__name__)


class EventStorage:
    """Scalar history per metric name: ``history[name] = [(iteration, value), ...]``."""

    def __init__(self, start_iter: int = 0):
        self.iter = start_iter
        self.history: dict[str, list[tuple[int, float]]] = defaultdict(list)

    def put_scalar(self, name: str, value) -> None:
        value = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
        self.history[name].append((self.iter, value))

    def put_scalars(self, **scalars) -> None:
        for name, value in scalars.items():
            self.put_scalar(name, value)

    def latest(self, name: str) -> float:
        return self.history[name][-1][1]

    def median(self, name: str, window: int) -> float:
        return statistics.median(v for _, v in self.history[name][-window:])

    def global_average(self, name: str) -> float:
        values = [v for _, v in self.history[name]]
        return sum(values) / len(values)

    def current(self, window: int) -> dict[str, float]:
        """Metrics recorded at the current iteration, loss-like ones smoothed by a window median."""
        out = {}
        for name, values in self.history.items():
            if values[-1][0] == self.iter:
                out[name] = self.median(name, window) if "loss" in name else values[-1][1]
        return out


def max_memory_mb() -> float:
    """Peak GPU memory allocated (CUDA) or the process's peak resident memory (CPU), in MiB."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class CommonMetricPrinter:
    """Console line: ETA, iteration, smoothed losses, time/iter, data time, lr, memory."""

    def __init__(self, max_iter: int, window: int = 20):
        self.max_iter, self.window = max_iter, window

    def write(self, storage: EventStorage) -> None:
        it = storage.iter
        losses = "  ".join(f"{k}: {storage.median(k, self.window):.4g}" for k in sorted(storage.history) if "loss" in k)
        step_time = storage.median("time", self.window) if storage.history.get("time") else float("nan")
        data_time = storage.median("data_time", self.window) if storage.history.get("data_time") else float("nan")
        eta = datetime.timedelta(seconds=int(step_time * (self.max_iter - it - 1))) if step_time == step_time else "?"
        lr = storage.latest("lr") if storage.history.get("lr") else float("nan")
        logger.info(f"eta: {eta}  iter: {it + 1}/{self.max_iter}  {losses}  time: {step_time:.4f}  "
                    f"data_time: {data_time:.4f}  lr: {lr:.6g}  max_mem: {max_memory_mb():.0f}M")


class JSONWriter:
    """Appends one JSON object per report to ``path`` (metrics.json), each line in one ``write`` call
    so that a killed run leaves whole lines; a second report at the same iteration (the evaluation's
    results, after the training line) is merged into that iteration's record, the file rewritten
    atomically: one record per iteration. ``start`` first drops the records a run resumed from an
    earlier checkpoint is about to redo (and those of a run started over), so the file describes one
    run."""

    def __init__(self, path: str, window: int = 20):
        self.path, self.window = path, window
        self._last_record: dict | None = None  # the last record written, to merge a later report into

    def start(self, start_iter: int) -> None:
        """Keeps the records of the iterations before ``start_iter``; a line cut short is dropped."""
        kept = []
        if os.path.isfile(self.path):
            with open(self.path) as f:
                for line in f:
                    with contextlib.suppress(json.JSONDecodeError):
                        if json.loads(line).get("iteration", math.inf) < start_iter:
                            kept.append(line.rstrip("\n") + "\n")
        with open_atomically(self.path) as f:
            f.writelines(kept)
        self._last_record = None

    def write(self, storage: EventStorage) -> None:
        record = {"iteration": storage.iter, **storage.current(self.window)}
        if self._last_record is not None and self._last_record["iteration"] == storage.iter:
            self._last_record.update(record)
            with open(self.path) as f:
                earlier = f.readlines()[:-1]
            with open_atomically(self.path) as f:
                f.writelines([*earlier, json.dumps(self._last_record) + "\n"])
            return
        self._last_record = record
        handle = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            os.write(handle, (json.dumps(record) + "\n").encode())
        finally:
            os.close(handle)


class TensorboardWriter:
    """Every scalar recorded since the previous report, as TensorBoard events in ``log_dir``.
    ``start`` hides the events of earlier runs from ``start_iter`` on (TensorBoard's ``purge_step``)."""

    def __init__(self, log_dir: str):
        self.log_dir = log_dir
        self.writer = None
        self.written: dict[str, int] = defaultdict(int)  # name -> number of history entries written

    def start(self, start_iter: int) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only when used

        self.writer = SummaryWriter(self.log_dir, purge_step=start_iter)

    def write(self, storage: EventStorage) -> None:
        if self.writer is None:
            self.start(storage.iter)
        for name, values in storage.history.items():
            for it, value in values[self.written[name]:]:
                self.writer.add_scalar(name, value, it)
            self.written[name] = len(values)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
