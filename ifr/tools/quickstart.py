"""The main job on built-in data: train a small IFR Mask R-CNN on the synthetic shapes on the CPU,
then evaluate it and print the COCO tables.

    python -m ifr.tools.quickstart [--max-iter N] [--resume] [--eval-only] [KEY VALUE ...]

``--max-iter 0`` evaluates the untrained model (the baseline quoted in the README); ``--eval-only``
evaluates the model a previous run trained.

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

from .experiment import load_experiment, run_reporting_user_errors

_PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IFR_EXPERIMENT = os.path.join(_PROJECT_ROOT, "mask_rcnn.ifr.res50.fpn.coco.multiscale.1x")


def quickstart_output_dir(experiment: str = IFR_EXPERIMENT) -> str:
    """``$IFR_OUTPUT_ROOT/quickstart`` (default ``output/quickstart``) for the IFR folder, and
    ``.../quickstart-<folder name>`` for any other, so small runs of different models never share
    (or resume from) each other's checkpoints."""
    root = os.environ.get("IFR_OUTPUT_ROOT", os.path.join(_PROJECT_ROOT, "output"))
    name = os.path.basename(os.path.normpath(os.path.abspath(experiment)))
    same = os.path.abspath(experiment) == os.path.abspath(IFR_EXPERIMENT)
    return os.path.join(root, "quickstart" if same else f"quickstart-{name}")


def small_model_overrides(max_iter: int, num_workers: int = 2, experiment: str = IFR_EXPERIMENT) -> dict:
    """A CPU-sized IFR Mask R-CNN on the synthetic shapes. No ImageNet weights exist offline, so the
    backbone (ResNet-18, GroupNorm, nothing frozen) trains from scratch; anchors are halved for the
    small objects; the mask head trains unrolled for 80% of the run, then with the implicit solve and
    backward (the IFR schedule, compressed). Gradients are clipped because nothing is pretrained."""
    return dict(
        MODEL=dict(
            DEVICE="cpu", WEIGHTS="",
            BACKBONE=dict(FREEZE_AT=0),
            RESNETS=dict(DEPTH=18, NORM="GN", STRIDE_IN_1X1=False),
            FPN=dict(OUT_CHANNELS=128),
            ANCHOR_GENERATOR=dict(SIZES=[[16], [32], [64], [128], [256]]),
            RPN=dict(PRE_NMS_TOPK_TRAIN=1000, PRE_NMS_TOPK_TEST=500, POST_NMS_TOPK_TRAIN=500,
                     POST_NMS_TOPK_TEST=300, BATCH_SIZE_PER_IMAGE=128),
            ROI_HEADS=dict(NUM_CLASSES=3, BATCH_SIZE_PER_IMAGE=64),
            ROI_BOX_HEAD=dict(FC_DIM=512),
            ROI_MASK_HEAD=dict(PRETRAINED_STEPS=int(max_iter * 0.8)),
        ),
        DATASETS=dict(TRAIN=("synthetic_shapes_train",), TEST=("synthetic_shapes_val",)),
        SOLVER=dict(LR_SCHEDULER=dict(MAX_ITER=max_iter, STEPS=(int(max_iter * 0.85),),
                                      WARMUP_ITERS=min(100, max_iter // 4)),
                    OPTIMIZER=dict(BASE_LR=0.02), IMS_PER_BATCH=4, IMS_PER_DEVICE=4,
                    CLIP_GRADIENTS=dict(ENABLED=True, CLIP_TYPE="norm", CLIP_VALUE=5.0),
                    CHECKPOINT_PERIOD=max(max_iter // 4, 1)),
        INPUT=dict(AUG=dict(
            TRAIN_PIPELINES=[("ResizeShortestEdge", dict(short_edge_length=(96, 112, 128, 144), max_size=240,
                                                         sample_style="choice")),
                             ("RandomFlip", dict())],
            TEST_PIPELINES=[("ResizeShortestEdge", dict(short_edge_length=128, max_size=240, sample_style="choice"))],
        )),
        DATALOADER=dict(NUM_WORKERS=num_workers),
        OUTPUT_DIR=quickstart_output_dir(experiment),
        SEED=0,
    )


def run(args) -> None:
    config, build_model = load_experiment(args.experiment)
    config.merge(small_model_overrides(args.max_iter, experiment=args.experiment))
    config.merge_from_list(args.opts)
    default_setup(config, args)
    if args.eval_only:  # re-evaluate the trained model (e.g. to time inference on an idle machine)
        model = build_model(config).to(config.MODEL.DEVICE)
        Checkpointer(model, config.OUTPUT_DIR).load(os.path.join(config.OUTPUT_DIR, "model_final.pth"), strict=True)
        evaluate(config, model, show_progress=not args.no_progress)
        return
    trainer = DefaultTrainer(config, build_model, show_progress=not args.no_progress)
    trainer.resume_or_load(resume=args.resume)
    trainer.train()  # evaluates on DATASETS.TEST after the last iteration


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-iter", type=int, default=800, help="training iterations (default 800)")
    parser.add_argument("--experiment", default=IFR_EXPERIMENT, help="experiment folder (default: the IFR one)")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument("--eval-only", action="store_true", help="only evaluate the trained model_final.pth")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar during evaluation")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    run_reporting_user_errors(run, args)


if __name__ == "__main__":
    main()
