"""The quickstart's small model: a CPU-sized R-CNN on the built-in synthetic shapes, as overrides of
any experiment folder's config (the folder keeps choosing the heads)."""
from __future__ import annotations

import os

from ifr.paths import EXPERIMENTS, output_root

IFR_EXPERIMENT = EXPERIMENTS["ifr"]


def quickstart_output_dir(experiment: str = IFR_EXPERIMENT) -> str:
    """``$IFR_OUTPUT_ROOT/quickstart`` (default ``output/quickstart``) for the IFR folder, and
    ``.../quickstart-<folder name>`` for any other, so small runs of different models never share
    (or resume from) each other's checkpoints."""
    name = os.path.basename(os.path.normpath(os.path.abspath(experiment)))
    same = os.path.abspath(experiment) == os.path.abspath(IFR_EXPERIMENT)
    return os.path.join(output_root(), "quickstart" if same else f"quickstart-{name}")


def small_model_overrides(max_iter: int, num_workers: int = 2, experiment: str = IFR_EXPERIMENT) -> dict:
    """A CPU-sized IFR Mask R-CNN on the synthetic shapes. No ImageNet weights exist offline, so the
    backbone (ResNet-18, GroupNorm, nothing frozen) trains from scratch; anchors are halved for the
    small objects; the mask head trains unrolled for 80% of the run, then with the implicit solve and
    backward (the IFR schedule, compressed). Gradients are clipped because nothing is pretrained."""
    return dict(
        MODEL=dict(
            DEVICE="cpu", WEIGHTS="",
            BACKBONE=dict(FREEZE_AT=0),
            RESNETS=dict(DEPTH=18, NORM="GN", STRIDE_IN_1X1=False, RES2_OUT_CHANNELS=64),
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
