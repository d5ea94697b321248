"""What to do once training has diverged. The newest checkpoint is finite but usually already wrecked:
it was written while the losses were climbing, and continuing from it, even at a lower LR, diverges
again. The advice names the newest checkpoint from before the losses started rising (and makes it the
one ``--resume`` continues from), or says to start over, in both cases with a lower LR; the checkpoints
written since are set aside (renamed ``*.pth.diverged``), so neither ``--resume`` nor ``pods_test``
takes them."""
from __future__ import annotations

import math
import os
import statistics

from .checkpoint import DIVERGED_SUFFIX

# The losses are rising once each total loss is more than this many times the lowest smoothed loss
# before it (a window median, so single lucky batches do not set the bar).
RISE_FACTOR = 2.0
LR_REDUCTION = 10.0


def rise_start(losses: list[tuple[int, float]], window: int) -> int | None:
    """The first iteration of the final streak of total losses above ``RISE_FACTOR`` times the lowest
    ``window``-median before them (a non-finite loss counts as above); None when the last loss is not
    above it (nothing was rising: the run broke at once). ``losses``: ``[(iteration, total loss)]``."""
    values = [v for _, v in losses]
    lowest, above = math.inf, []
    for k, value in enumerate(values):
        above.append(k > 0 and not value <= RISE_FACTOR * lowest)
        smoothed = statistics.median(values[max(0, k - window + 1):k + 1])
        if math.isfinite(smoothed):
            lowest = min(lowest, smoothed)
    if not above or not above[-1]:
        return None
    k = len(above) - 1
    while k > 0 and above[k - 1]:
        k -= 1
    return losses[k][0]


def divergence_advice(checkpointer, losses: list[tuple[int, float]], window: int, base_lr: float,
                      trained_base_lr: dict[str, float] | None = None) -> str:
    """The sentence ending a diverged run's error. ``checkpointer.iterations``: the checkpoints this
    run saved or resumed from and the iteration each was written after (its weights are the ones the
    loss of the next iteration was measured on); ``trained_base_lr``: the BASE_LR of those trained
    at another one than ``base_lr`` (a checkpoint resumed from with a new LR). The advised LR is a
    tenth of ``base_lr``, or the lower LR the checkpoint was trained at."""
    start = rise_start(losses, window)
    measured = {it for it, _ in losses}
    healthy = [(it, path) for path, it in checkpointer.iterations.items()
               if start is None or (it + 1 < start and it + 1 in measured)]
    wrecked = sorted(path for path in checkpointer.iterations if path not in {p for _, p in healthy})
    aside = [checkpointer.set_aside(path) for path in wrecked if os.path.isfile(path)]
    kept = (f" (those written since, {', '.join(os.path.basename(p) for p in aside)}, are kept as *{DIVERGED_SUFFIX}: "
            "--resume and pods_test do not take them)") if aside else ""
    if not healthy:
        since = f" (from iteration {start} on)" if start is not None else ""
        return (f"No checkpoint of this run is from before the losses started rising{since}{kept}: start over with a "
                f"lower LR, e.g. --overwrite SOLVER.OPTIMIZER.BASE_LR {base_lr / LR_REDUCTION:.3g}")
    iteration, path = max(healthy)
    trained = (trained_base_lr or {}).get(path, base_lr)
    lower = (f"SOLVER.OPTIMIZER.BASE_LR {trained:.3g} (the LR it was trained at)" if trained < base_lr / LR_REDUCTION
             else f"SOLVER.OPTIMIZER.BASE_LR {base_lr / LR_REDUCTION:.3g}")
    if checkpointer.last_checkpoint() != path:
        checkpointer.point_marker_to(path)
        where = (f"The newest checkpoint from before the losses started rising (at iteration {start}) is {path}; "
                 f"last_checkpoint now names it{kept}")
    else:
        where = f"The last checkpoint is {path}{kept}"
    return f"{where}: continue from it with a lower LR, e.g. --resume {lower}"
