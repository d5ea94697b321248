"""``pods_train``: train (or with --eval-only, evaluate) the experiment in the current folder."""
from __future__ import annotations

import logging
import os

from ifr.engine import Checkpointer, DefaultTrainer, default_argument_parser, default_setup, evaluate
from ifr.errors import UserError

from .experiment import load_experiment, run_reporting_user_errors

logger = logging.getLogger("ifr")


def check_single_process(args) -> None:
    if args.num_gpus * args.num_machines > 1:
        raise UserError("multi-process training (--num-gpus/--num-machines > 1) is not available in this version; "
                        "run with --num-gpus 1 (the schedule is scaled to one process automatically)")


def run(args) -> None:
    check_single_process(args)
    config, build_model = load_experiment(os.getcwd())
    config.link_log()
    config.merge_from_list(args.opts)
    default_setup(config, args)
    if args.eval_only:
        model = build_model(config).to(config.MODEL.DEVICE)
        Checkpointer(model, config.OUTPUT_DIR).resume_or_load(config.MODEL.WEIGHTS, resume=args.resume)
        evaluate(config, model)
        return
    trainer = DefaultTrainer(config, build_model)
    trainer.resume_or_load(resume=args.resume)
    trainer.train()


def main(argv: list[str] | None = None) -> None:
    args = default_argument_parser("Train an IFR experiment (run inside its folder).").parse_args(argv)
    run_reporting_user_errors(run, args)


if __name__ == "__main__":
    main()
