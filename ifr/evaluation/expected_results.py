"""TEST.EXPECTED_RESULTS (cvpods / detectron2): evaluation results checked against expected values."""
from __future__ import annotations

import logging
import math

from ifr.config import ConfigError
from ifr.errors import UserError

from .coco_evaluation import METRICS

logger = logging.getLogger(__name__)

# Tolerance for reproducing a published (paper) result with released weights: the published values are
# rounded to 0.1 (+-0.05); the default solver (Broyden with the original's defect corrected, F_TOL
# 1e-4) keeps every mask at IoU >= 0.99 of a tight solve, worth at most ~0.1 AP; GPU non-determinism
# adds ~0.05.
PUBLISHED_TOLERANCE = 0.2


class ResultsMismatch(UserError):
    """An evaluation result outside the tolerance of TEST.EXPECTED_RESULTS."""


def expected(task: str, dataset: str, tolerance: float = PUBLISHED_TOLERANCE, **metrics: float) -> list[tuple]:
    """TEST.EXPECTED_RESULTS entries for one task on one dataset: ``expected("segm", "coco_2017_val", AP=36.3)``."""
    return [(task, metric, value, tolerance, dataset) for metric, value in metrics.items()]


def _parse(entry) -> tuple[str, str, float, float, str | None]:
    if not isinstance(entry, (list, tuple)) or len(entry) not in (4, 5):
        raise ConfigError(f"TEST.EXPECTED_RESULTS entries are [task, metric, value, tolerance] or [task, metric, "
                          f"value, tolerance, dataset], got {entry!r}")
    task, metric, value, tolerance = entry[:4]
    if not (isinstance(value, (int, float)) and isinstance(tolerance, (int, float)) and tolerance >= 0):
        raise ConfigError(f"TEST.EXPECTED_RESULTS entry {entry!r}: value and tolerance must be numbers, tolerance >= 0")
    return str(task), str(metric), float(value), float(tolerance), (str(entry[4]) if len(entry) == 5 else None)


def check_expected_entries(expected: list, tasks: tuple[str, ...], datasets: tuple[str, ...]) -> None:
    """TEST.EXPECTED_RESULTS checked when a run starts (not after hours of training): each entry
    well-formed, its metric one the evaluation reports and, for the entries the run checks (its
    ``datasets``'), its task one the run evaluates; a ConfigError naming the entry otherwise."""
    if not isinstance(expected, (list, tuple)):
        raise ConfigError(f"TEST.EXPECTED_RESULTS must be a list of [task, metric, value, tolerance(, dataset)] "
                          f"entries, got {expected!r}")
    for entry in expected:
        task, metric, _, _, dataset = _parse(entry)
        if task not in tasks and (dataset is None or dataset in datasets):
            raise ConfigError(f"TEST.EXPECTED_RESULTS entry {entry!r}: no such task {task!r}; this run evaluates "
                              f"{', '.join(tasks)}")
        if metric not in METRICS and not metric.startswith("AP-"):
            raise ConfigError(f"TEST.EXPECTED_RESULTS entry {entry!r}: no such metric {metric!r}; the metrics are "
                              f"{', '.join(METRICS)} and AP-<class name>")


def verify_results(expected: list, results: dict[str, dict[str, float]], dataset: str) -> int:
    """Checks ``results`` (``{task: {metric: value}}``, one dataset's) against ``expected``; entries
    naming another dataset are skipped. Returns the number of entries checked; raises
    ``ResultsMismatch`` listing every result outside its tolerance (or missing)."""
    entries = [_parse(e) for e in expected]
    checked, failures = 0, []
    for task, metric, value, tolerance, for_dataset in entries:
        if for_dataset is not None and for_dataset != dataset:
            continue
        checked += 1
        actual = results.get(task, {}).get(metric)
        if actual is None:  # e.g. AP-<class> of a class the dataset does not have
            failures.append(f"{task}/{metric}: no such metric in the evaluation of {dataset} (it has "
                            f"{', '.join(sorted(results.get(task, {}))) or 'no ' + task + ' results'})")
        elif not math.isfinite(actual) or abs(actual - value) > tolerance:
            failures.append(f"{task}/{metric} {actual:.2f}, expected {value} +- {tolerance}")
    skipped = len(entries) - checked
    if skipped:
        logger.info("TEST.EXPECTED_RESULTS: %d entries are for other datasets than %s, not checked", skipped, dataset)
    if failures:
        raise ResultsMismatch(f"the evaluation on {dataset} does not reproduce TEST.EXPECTED_RESULTS: "
                              + "; ".join(failures))
    if checked:
        logger.info("TEST.EXPECTED_RESULTS: all %d expected results reproduced on %s", checked, dataset)
    return checked
