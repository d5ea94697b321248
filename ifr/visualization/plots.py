"""Figures written as PNG with matplotlib (Agg backend: no display needed)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import torch  # noqa: E402

from ifr.utils.atomic import write_atomically  # noqa: E402


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["iteration"], r[key]) for r in records if key in r and "iteration" in r]
    return [p[0] for p in points], [p[1] for p in points]


def plot_training_curves(records: list[dict], path: str) -> None:
    """metrics.json records -> one PNG: total and per-term losses, learning rate, and (for IFR heads)
    the fixed-point solves' iterations and relative residuals, each over the training iterations."""
    keys = sorted({k for r in records for k in r})
    losses = ["total_loss"] + [k for k in keys if k.startswith("loss_")]
    panels = [("loss", losses, "log"), ("learning rate", ["lr"], "linear"),
              ("solver iterations", [k for k in keys if k.startswith("deq/") and k.endswith("_iterations")], "linear"),
              ("solver relative residual", [k for k in keys if k.startswith("deq/") and k.endswith("_rel_residual")],
               "log")]
    panels = [p for p in panels if any(_series(records, k)[0] for k in p[1])]
    if not panels:
        raise ValueError("no training metrics (losses, lr) in the records")
    figure, axes = plt.subplots(len(panels), 1, figsize=(9, 3.2 * len(panels)), sharex=True, squeeze=False)
    for axis, (title, series_keys, scale) in zip(axes[:, 0], panels):
        for key in series_keys:
            x, y = _series(records, key)
            if x:
                axis.plot(x, y, label=key.split("/")[-1] if key.startswith("deq/") else key,
                          linewidth=2.0 if key == "total_loss" else 1.0)
        axis.set_yscale(scale)
        axis.set_title(title)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, ncol=3)
    axes[-1, 0].set_xlabel("iteration")
    figure.tight_layout()
    write_atomically(path, lambda temporary: figure.savefig(temporary, dpi=100))
    plt.close(figure)


def plot_residual_traces(traces: dict[str, torch.Tensor], path: str, title: str = "") -> None:
    """Per-solver residual traces -> one PNG with a panel per solver.

    Args:
        traces: solver name -> (steps + 1, R) absolute residuals ``||f(z_k) - z_k||`` of R RoIs;
            plotted relative to each RoI's initial residual, one thin line per RoI and the median bold.
    """
    figure, axes = plt.subplots(1, len(traces), figsize=(4.2 * len(traces), 3.6), sharey=True, squeeze=False)
    for axis, (name, trace) in zip(axes[0], traces.items()):
        relative = (trace / trace[:1].clamp_min(1e-30)).cpu()
        steps = range(relative.shape[0])
        for roi in range(relative.shape[1]):
            axis.plot(steps, relative[:, roi].tolist(), color="tab:blue", alpha=0.15, linewidth=0.8)
        axis.plot(steps, relative.median(dim=1).values.tolist(), color="black", linewidth=2.0, label="median")
        axis.set_yscale("log")
        axis.set_title(name)
        axis.set_xlabel("solver step")
        axis.grid(alpha=0.3)
    axes[0, 0].set_ylabel("residual / initial residual")
    axes[0, 0].legend()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    write_atomically(path, lambda temporary: figure.savefig(temporary, dpi=100))
    plt.close(figure)
