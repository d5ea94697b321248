"""``pods_test``: evaluate checkpoints of the experiment in the current folder.

``MODEL.WEIGHTS file`` on the command line evaluates that file; otherwise the newest
``OUTPUT_DIR/model_*.pth``, or with --start-iter/--end-iter every checkpoint in that range.
"""
from __future__ import annotations

import contextlib
import os

from ifr.data import check_datasets
from ifr.engine import Checkpointer, default_argument_parser, default_setup, evaluate
from ifr.engine.checkpoint import checkpoint_iteration, training_checkpoints
from ifr.engine.defaults import EVALUATION_CONFIG_RECORD, check_arguments, check_expected_results, evaluated_tasks
from ifr.engine.launch import launch
from ifr.utils.run_lock import claim_run_folder, launches_the_job
from ifr.errors import UserError
from ifr.utils import comm

from .experiment import configured, load_experiment, run_reporting_user_errors


def checkpoints_to_evaluate(cfg, args) -> list[str]:
    """MODEL.WEIGHTS when the command line names a file; otherwise (also for ``MODEL.WEIGHTS ''``) the
    folder's checkpoints: the newest, or those of --start-iter / --end-iter."""
    if "MODEL.WEIGHTS" in args.opts[::2] and cfg.MODEL.WEIGHTS:
        return [cfg.MODEL.WEIGHTS]
    files = sorted(training_checkpoints(cfg.OUTPUT_DIR), key=os.path.getmtime)
    if not files:
        raise UserError(f"no checkpoints model_*.pth in {cfg.OUTPUT_DIR} to evaluate: train first, or pass "
                        "MODEL.WEIGHTS /path/to/model.pth")
    if args.start_iter is None and args.end_iter is None:
        return files[-1:]
    start = args.start_iter if args.start_iter is not None else 0
    end = args.end_iter if args.end_iter is not None else float("inf")
    max_iter = cfg.SOLVER.LR_SCHEDULER.MAX_ITER
    selected = [f for f in files if start <= checkpoint_iteration(f, max_iter) <= end]
    if not selected:
        raise UserError(f"no checkpoint in {cfg.OUTPUT_DIR} between iterations {start} and {end}")
    return sorted(selected, key=lambda f: checkpoint_iteration(f, max_iter))


def test_worker(args) -> None:
    """What each process runs: the test set is sharded over the processes and the results merged."""
    config, build_model = load_experiment(os.getcwd())
    config.merge_from_list(args.opts)
    default_setup(config, args, world_size=comm.get_world_size(), rank=comm.get_rank(), record=EVALUATION_CONFIG_RECORD)
    if not config.DATASETS.TEST:
        raise UserError("DATASETS.TEST is empty: name a registered dataset, e.g. DATASETS.TEST \"('coco_2017_val',)\"")
    check_datasets(config.DATASETS.TEST, config.MODEL.ROI_HEADS.NUM_CLASSES, evaluated_tasks(config))
    paths = checkpoints_to_evaluate(config, args)
    for path in paths:
        model = build_model(config).to(config.MODEL.DEVICE)
        Checkpointer(model, config.OUTPUT_DIR).resume_or_load(path, resume=args.resume, strict=True)
        results = evaluate(config, model)
    # The expected results describe one model (e.g. a released model_final.pth), not a range of checkpoints.
    if len(paths) == 1:
        check_expected_results(config, results)


def run(args) -> None:
    check_arguments(args)
    config = configured(os.getcwd(), args.opts)
    # The results go to OUTPUT_DIR/inference, which a training there writes too.
    claim = claim_run_folder(config.OUTPUT_DIR, "evaluate into another folder: MODEL.WEIGHTS <checkpoint> OUTPUT_DIR "
                                                "<folder>") if launches_the_job(args.machine_rank, args.slurm) else None
    with claim or contextlib.nullcontext():
        launch(test_worker, args.num_gpus, args.num_machines, args.machine_rank, args.dist_url, args=(args,),
               device=config.MODEL.DEVICE, join_timeout_s=args.join_timeout, slurm=args.slurm)


def main(argv: list[str] | None = None) -> None:
    args = default_argument_parser("Evaluate an IFR experiment's checkpoints (run inside its folder).",
                                   test=True).parse_args(argv)
    run_reporting_user_errors(run, args)


if __name__ == "__main__":
    main()
