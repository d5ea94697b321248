"""``pods_train``: train (or with --eval-only, evaluate) the experiment in the current folder, in one
process or, with ``--num-gpus N`` / ``--num-machines`` / torchrun, in one process per device."""
from __future__ import annotations

import contextlib
import logging
import os

from ifr.engine import Checkpointer, DefaultTrainer, default_argument_parser, default_setup, evaluate
from ifr.engine.defaults import (EVALUATION_CONFIG_RECORD, check_arguments, check_expected_results,
                                 check_resumed_together)
from ifr.engine.launch import launch
from ifr.utils.run_lock import claim_run_folder, launches_the_job
from ifr.errors import UserError
from ifr.utils import comm

from .experiment import configured, load_experiment, run_reporting_user_errors

logger = logging.getLogger("ifr")


def train_worker(args) -> None:
    """What each process runs (the only one without --num-gpus)."""
    config, build_model = load_experiment(os.getcwd())
    config.merge_from_list(args.opts)
    if comm.is_main_process():
        config.link_log()  # after the overrides: the link names the folder this run writes
    default_setup(config, args, world_size=comm.get_world_size(), rank=comm.get_rank(),
                  record=EVALUATION_CONFIG_RECORD if args.eval_only else "config.json")
    if args.eval_only:
        # MODEL.WEIGHTS from the command line, else the run's newest checkpoint (the config's
        # MODEL.WEIGHTS is the training's initialisation, e.g. an ImageNet backbone, not a trained model).
        model = build_model(config).to(config.MODEL.DEVICE)
        checkpointer = Checkpointer(model, config.OUTPUT_DIR)
        if "MODEL.WEIGHTS" in args.opts[::2] and config.MODEL.WEIGHTS:
            checkpointer.load(config.MODEL.WEIGHTS, strict=True)
        elif checkpointer.resume(strict=True) is None:
            raise UserError(f"--eval-only: nothing was trained in {config.OUTPUT_DIR} yet (no checkpoint): train first "
                            "(sh pods_train.sh), or pass the model to evaluate: MODEL.WEIGHTS /path/to/model_final.pth")
        check_expected_results(config, evaluate(config, model))
        return
    trainer = DefaultTrainer(config, build_model)
    trainer.resume_or_load(resume=args.resume, overwrite=args.overwrite)
    check_resumed_together(trainer.start_iter, config.OUTPUT_DIR)
    trainer.train()


def run(args) -> None:
    check_arguments(args)
    config = configured(os.getcwd(), args.opts)
    claims = launches_the_job(args.machine_rank, args.slurm)
    with claim_run_folder(config.OUTPUT_DIR) if claims else contextlib.nullcontext():
        launch(train_worker, args.num_gpus, args.num_machines, args.machine_rank, args.dist_url, args=(args,),
               device=config.MODEL.DEVICE, join_timeout_s=args.join_timeout, slurm=args.slurm)


def main(argv: list[str] | None = None) -> None:
    args = default_argument_parser("Train an IFR experiment (run inside its folder).").parse_args(argv)
    run_reporting_user_errors(run, args)


if __name__ == "__main__":
    main()
