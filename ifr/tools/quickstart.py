"""The main job on built-in data: train a small IFR Mask R-CNN on the synthetic shapes on the CPU,
then evaluate it and print the COCO tables.

    python -m ifr.tools.quickstart [--max-iter N] [--eval-images N] [--resume] [--eval-only] [KEY VALUE ...]

``--max-iter 0`` evaluates the untrained model (the baseline quoted in docs/results.md); ``--eval-only``
evaluates the model a previous run trained. A smoke run: ``--max-iter 20 --eval-images 5`` (evaluates
the first 5 validation images only: TEST.MAX_IMAGES).

It is the IFR experiment folder's config with ``small_model_overrides()`` on top (ResNet-18 with
GroupNorm trained from scratch, 128-px images, 3 classes, a short schedule). ``--experiment FOLDER``
runs the same small job with another experiment folder's model (e.g. a copied folder, to smoke-test
an ablation). Outputs go to ``$IFR_OUTPUT_ROOT/quickstart`` (default: ``output/quickstart``), or
``.../quickstart-<folder name>`` with ``--experiment``.
"""
from __future__ import annotations

import argparse
import os

from ifr.engine import Checkpointer, DefaultTrainer, default_setup, evaluate
from ifr.engine.defaults import EVALUATION_CONFIG_RECORD, check_arguments
from ifr.utils.run_lock import claim_run_folder
from ifr.errors import UserError
from ifr.presets.small_model import IFR_EXPERIMENT, small_model_overrides

from .experiment import load_experiment, run_reporting_user_errors


def run(args) -> None:
    check_arguments(args)
    if args.max_iter < 0:
        raise UserError(f"--max-iter is a number of training iterations (>= 0; 0 evaluates the untrained model), got "
                        f"{args.max_iter}")
    config, build_model = load_experiment(args.experiment)
    config.merge(small_model_overrides(args.max_iter, experiment=args.experiment))
    if args.eval_images is not None:
        config.TEST.MAX_IMAGES = args.eval_images
    config.merge_from_list(args.opts)
    with claim_run_folder(config.OUTPUT_DIR):
        run_in_claimed_folder(config, build_model, args)


def run_in_claimed_folder(config, build_model, args) -> None:
    evaluates = args.eval_only or args.max_iter == 0  # the trained model again, or the untrained baseline
    default_setup(config, args, record=EVALUATION_CONFIG_RECORD if evaluates else "config.json")
    if evaluates:
        model = build_model(config).to(config.MODEL.DEVICE)
        if args.eval_only:
            trained = os.path.join(config.OUTPUT_DIR, "model_final.pth")
            if not os.path.isfile(trained):
                raise UserError(f"--eval-only: nothing was trained in {config.OUTPUT_DIR} yet (no model_final.pth): "
                                "train first, with the same command without --eval-only")
            Checkpointer(model, config.OUTPUT_DIR).load(trained, strict=True)
        evaluate(config, model, show_progress=not args.no_progress)
        return
    trainer = DefaultTrainer(config, build_model, show_progress=not args.no_progress)
    trainer.resume_or_load(resume=args.resume, overwrite=args.overwrite)
    trainer.train()  # evaluates on DATASETS.TEST after the last iteration


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-iter", type=int, default=800, help="training iterations (default 800)")
    parser.add_argument("--eval-images", type=int, default=None, metavar="N",
                        help="evaluate only the first N validation images (TEST.MAX_IMAGES; a smoke run)")
    parser.add_argument("--experiment", default=IFR_EXPERIMENT, help="experiment folder (default: the IFR one)")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="train again from scratch over a previous run")
    parser.add_argument("--eval-only", action="store_true", help="only evaluate the trained model_final.pth")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar during evaluation")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    run_reporting_user_errors(run, args)


if __name__ == "__main__":
    main()
