"""Training curves from a run's metrics.json, as one PNG:

    python -m ifr.tools.plot_metrics OUTPUT_DIR_or_metrics.json [--output curves.png]

Panels: total and per-term losses, learning rate, and for IFR heads the forward/backward fixed-point
solves' iterations and relative residuals. Default output: ``training_curves.png`` beside metrics.json.
"""
from __future__ import annotations

import argparse
import json
import os

from ifr.errors import UserError
from ifr.visualization import plot_training_curves

from .experiment import run_reporting_user_errors


def metrics_file(path: str) -> str:
    """``path`` itself, or the metrics.json inside it when it is a run's OUTPUT_DIR."""
    return os.path.join(path, "metrics.json") if os.path.isdir(path) else path


def read_metrics(path: str) -> list[dict]:
    """The records of a metrics.json (one JSON object per line)."""
    path = metrics_file(path)
    if not os.path.isfile(path):
        raise UserError(f"{path} does not exist: pass a training OUTPUT_DIR or its metrics.json")
    records = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:  # a run killed mid-write leaves a partial last line
                    raise UserError(f"{path}:{number} is not JSON; remove the damaged line") from None
    return records


def run(args) -> None:
    records = read_metrics(args.metrics)
    output = args.output or os.path.join(os.path.dirname(os.path.abspath(metrics_file(args.metrics))),
                                         "training_curves.png")
    try:
        plot_training_curves(records, output)
    except ValueError as e:
        raise UserError(f"{args.metrics}: {e}") from None
    print(f"wrote {output}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("metrics", help="a training OUTPUT_DIR or its metrics.json")
    parser.add_argument("--output", default=None, help="PNG to write (default: training_curves.png beside it)")
    run_reporting_user_errors(run, parser.parse_args(argv))


if __name__ == "__main__":
    main()
