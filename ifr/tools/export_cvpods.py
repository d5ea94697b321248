"""Write a checkpoint's weights in cvpods naming, for evaluation with the original IFR code.

    python -m ifr.tools.export_cvpods output/model_final.pth model_final_cvpods.pth

The result has the released checkpoints' keys (including the IFR head's redundant block copies that
the original code expects), as ``{"model": state_dict}``.
"""
from __future__ import annotations

import argparse

from ifr.checkpoint import export_cvpods_checkpoint
from ifr.engine.defaults import setup_logger

from .experiment import run_reporting_user_errors


def run(args) -> None:
    count = export_cvpods_checkpoint(args.source, args.destination)
    print(f"wrote {count} tensors in cvpods naming to {args.destination}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="checkpoint to export (this project's, or any format pods_test reads)")
    parser.add_argument("destination", help="where to write the cvpods-named .pth")
    args = parser.parse_args(argv)
    setup_logger(None)
    run_reporting_user_errors(run, args)


if __name__ == "__main__":
    main()
