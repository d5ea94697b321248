"""Counting the RoIs whose fixed-point solves ended above their tolerance, and the one warning about
them that training (every ``TRAINER.WINDOW_SIZE`` iterations) and evaluation (once per dataset) give."""
from __future__ import annotations

import logging
from collections import defaultdict

from .solvers import SolverStats

logger = logging.getLogger(__name__)


class UnconvergedSolves:
    """Per (module tag, solve kind "forward"/"backward"): RoIs above tolerance, RoIs solved and the
    worst relative residual since the last ``warn``."""

    def __init__(self, warn_fraction: float = 0.05):
        self.warn_fraction = warn_fraction
        self.counts: dict[tuple[str, str], list] = defaultdict(lambda: [0, 0, 0.0])

    def add(self, tag: str, kind: str, stats: SolverStats) -> int:
        """Counts one solve's RoIs; returns how many ended above the tolerance."""
        unconverged = int((~stats.converged).sum())
        counts = self.counts[(tag, kind)]
        counts[0] += unconverged
        counts[1] += stats.converged.numel()
        counts[2] = max(counts[2], stats.summary()["rel_residual"])
        return unconverged

    def warn(self, span: str) -> None:
        """Warns for each solve kind with more than ``warn_fraction`` of its RoIs above the tolerance
        (``span``: "the last 20 iterations", "the evaluation on coco_2017_val"), then starts over."""
        for (tag, kind), (unconverged, total, worst) in self.counts.items():
            if total and unconverged > self.warn_fraction * total:
                limit = "F_THRES" if kind == "forward" else "B_THRES"
                logger.warning("%s: the %s fixed-point solve ended above its tolerance for %d of %d RoIs (%.0f%%) in %s "
                               "(worst relative residual %.1e); the gradients and masks are then approximate: raise "
                               "MODEL.ROI_MASK_HEAD.%s or check that training is stable",
                               tag, kind, unconverged, total, 100 * unconverged / total, span, worst, limit)
        self.counts.clear()
