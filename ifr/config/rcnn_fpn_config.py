"""Default values of cvpods' ``RCNNFPNConfig`` (cvpods@ed05660, read off the dumped config).

Every experiment folder's config subclasses ``RCNNFPNConfig`` and registers its overrides.
"""
from __future__ import annotations

from .base_config import BaseConfig

_RCNN_FPN_DEFAULTS = dict(
    MODEL=dict(
        DEVICE="cuda",
        WEIGHTS="",
        AS_PRETRAIN=False,
        PIXEL_MEAN=[103.53, 116.28, 123.675],  # BGR, 0-255
        PIXEL_STD=[1.0, 1.0, 1.0],
        LOAD_PROPOSALS=False,
        MASK_ON=False,
        KEYPOINT_ON=False,
        NMS_TYPE="normal",
        BACKBONE=dict(FREEZE_AT=2),
        RESNETS=dict(
            DEPTH=None,
            OUT_FEATURES=["res2", "res3", "res4", "res5"],
            NUM_GROUPS=1,
            NORM="FrozenBN",
            ZERO_INIT_RESIDUAL=False,
            WIDTH_PER_GROUP=64,
            STRIDE_IN_1X1=True,
            RES5_DILATION=1,
            RES2_OUT_CHANNELS=256,
            STEM_OUT_CHANNELS=64,
            DEEP_STEM=False,
        ),
        FPN=dict(IN_FEATURES=["res2", "res3", "res4", "res5"], OUT_CHANNELS=256, NORM="",
                 FUSE_TYPE="sum", BLOCK_IN_FEATURES="p5"),
        ANCHOR_GENERATOR=dict(SIZES=[[32], [64], [128], [256], [512]], ASPECT_RATIOS=[[0.5, 1.0, 2.0]],
                              OFFSET=0.0),
        PROPOSAL_GENERATOR=dict(NAME="RPN", MIN_SIZE=0),
        RPN=dict(
            IN_FEATURES=["p2", "p3", "p4", "p5", "p6"],
            BOUNDARY_THRESH=-1,
            IOU_THRESHOLDS=[0.3, 0.7],
            IOU_LABELS=[0, -1, 1],
            BATCH_SIZE_PER_IMAGE=256,
            POSITIVE_FRACTION=0.5,
            BBOX_REG_WEIGHTS=(1.0, 1.0, 1.0, 1.0),
            SMOOTH_L1_BETA=0.0,
            LOSS_WEIGHT=1.0,
            PRE_NMS_TOPK_TRAIN=2000,  # per FPN level
            PRE_NMS_TOPK_TEST=1000,
            POST_NMS_TOPK_TRAIN=1000,  # per image, over all levels
            POST_NMS_TOPK_TEST=1000,
            NMS_THRESH=0.7,
        ),
        ROI_HEADS=dict(
            IN_FEATURES=["p2", "p3", "p4", "p5"],
            NUM_CLASSES=80,
            IOU_THRESHOLDS=[0.5],
            IOU_LABELS=[0, 1],
            BATCH_SIZE_PER_IMAGE=512,
            POSITIVE_FRACTION=0.25,
            SCORE_THRESH_TEST=0.05,
            NMS_THRESH_TEST=0.5,
            PROPOSAL_APPEND_GT=True,
        ),
        ROI_BOX_HEAD=dict(
            BBOX_REG_WEIGHTS=(10.0, 10.0, 5.0, 5.0),
            SMOOTH_L1_BETA=0.0,
            POOLER_RESOLUTION=7,
            POOLER_SAMPLING_RATIO=0,
            POOLER_TYPE="ROIAlignV2",
            NUM_FC=2,
            FC_DIM=1024,
            NUM_CONV=0,
            CONV_DIM=256,
            NORM="",
            CLS_AGNOSTIC_BBOX_REG=False,
            TRAIN_ON_PRED_BOXES=False,
        ),
        ROI_BOX_CASCADE_HEAD=dict(
            BBOX_REG_WEIGHTS=((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0)),
            IOUS=(0.5, 0.6, 0.7),
        ),
        ROI_MASK_HEAD=dict(
            POOLER_RESOLUTION=14,
            POOLER_SAMPLING_RATIO=0,
            NUM_CONV=4,
            CONV_DIM=256,
            NORM="",
            CLS_AGNOSTIC_MASK=False,
            POOLER_TYPE="ROIAlignV2",
            # Not in cvpods: compute the mask head in channels_last memory layout (same results). On the
            # CPU (CHANNELS_LAST) it is measured faster (BENCHMARKS.md); on CUDA (CUDA_CHANNELS_LAST)
            # GroupNorm returns NCHW, so every block evaluation would copy layouts: off until measured.
            CHANNELS_LAST=True,
            CUDA_CHANNELS_LAST=False,
            # The refinement heads ("weight_sharing", "ifr"); the 4-conv head reads none of these.
            # The block's GroupNorm groups (the original: 4).
            GN_GROUPS=4,
            # IFR: NUM_CONV unrolled, weight-tied steps for the first PRETRAINED_STEPS training
            # iterations, then the fixed point: at most F_THRES steps of F_SOLVER forward and B_THRES
            # of B_SOLVER for the implicit backward, each stopping at residual F_TOL / B_TOL (relative
            # with STOP_MODE "rel"). F_TOL / B_TOL 1e-4 were chosen by measurement (BENCHMARKS.md):
            # every mask stays at IoU >= 0.99 with a 1e-6 solve, gradients within 5e-5 relative.
            # F_SOLVER "broyden_cvpods" with F_TOL 1e-5 evaluates released checkpoints as cvpods did.
            PRETRAINED_STEPS=50000,
            F_SOLVER="broyden",
            F_THRES=15,
            F_TOL=1e-4,
            B_SOLVER="broyden",
            B_THRES=15,
            B_TOL=1e-4,
            STOP_MODE="rel",
            # The solvers' own options: rank-one terms Broyden keeps before restarting, Anderson's
            # history length, damping and Gram-matrix regularisation, and the protective break (a
            # sample whose residual grows past DIVERGENCE_RATIO x its initial one is stopped).
            BROYDEN_MEMORY=15,
            ANDERSON_MEMORY=5,
            ANDERSON_DAMPING=1.0,
            ANDERSON_REGULARIZATION=1e-8,
            DIVERGENCE_RATIO=1e6,
            # "implicit" (exact implicit-function gradient, solved by B_SOLVER) or "phantom"
            # (PHANTOM_STEPS damped steps from z*, differentiated by autograd).
            BACKWARD="implicit",
            PHANTOM_STEPS=1,
            PHANTOM_DAMPING=1.0,
            # Jacobian regularisation (Bai et al. 2021) of the IFR head's implicit phase: the loss term
            # loss_jacobian = JACOBIAN_WEIGHT x a JACOBIAN_PROBES-probe Hutchinson estimate of
            # ||df/dz||_F^2 / numel at z*, on a fraction JACOBIAN_FREQUENCY of the iterations; 0: off.
            JACOBIAN_WEIGHT=0.0,
            JACOBIAN_FREQUENCY=1.0,
            JACOBIAN_PROBES=1,
            # GPUs: the forward and adjoint solves run in IEEE float32 unless SOLVE_ALLOW_TF32 (TF32's
            # ~1e-4 rounding per block evaluation is a floor under the residual at F_TOL 1e-4, so solves
            # would stall at F_THRES); the rest of the model follows torch's global TF32 settings. On
            # CUDA the solvers test convergence (a host sync) every CUDA_CHECK_PERIOD steps rather than
            # every step (broyden_cvpods keeps the original's per-step test).
            SOLVE_ALLOW_TF32=False,
            CUDA_CHECK_PERIOD=2,
        ),
    ),
    INPUT=dict(
        FORMAT="BGR",
        # cvpods' default is "polygon" (each polygon rasterised inside its box); this project
        # rasterises every mask at image resolution and crops it with RoIAlign, as detectron2 does
        # for "bitmask", and says so instead of pretending otherwise.
        MASK_FORMAT="bitmask",
        AUG=dict(
            TRAIN_PIPELINES=[
                ("ResizeShortestEdge", dict(short_edge_length=(800,), max_size=1333, sample_style="choice")),
                ("RandomFlip", dict()),
            ],
            TEST_PIPELINES=[
                ("ResizeShortestEdge", dict(short_edge_length=800, max_size=1333, sample_style="choice")),
            ],
        ),
    ),
    DATASETS=dict(TRAIN=(), TEST=()),
    # SKIP_CORRUPT_IMAGES (not in cvpods): train past missing/undecodable images instead of stopping.
    DATALOADER=dict(NUM_WORKERS=2, ASPECT_RATIO_GROUPING=True, FILTER_EMPTY_ANNOTATIONS=True, SKIP_CORRUPT_IMAGES=False),
    SOLVER=dict(
        # NAME: a key of ifr.solver.LR_SCHEDULERS. STEPS and GAMMA are WarmupMultiStepLR's.
        LR_SCHEDULER=dict(NAME="WarmupMultiStepLR", MAX_ITER=40000, STEPS=(30000,), WARMUP_FACTOR=0.001,
                          WARMUP_ITERS=1000, WARMUP_METHOD="linear", GAMMA=0.1),
        # NAME: a key of ifr.solver.OPTIMIZERS. MOMENTUM is SGD's; BETAS, EPS and AMSGRAD are AdamW's.
        OPTIMIZER=dict(NAME="D2SGD", BASE_LR=0.001, BIAS_LR_FACTOR=1.0, WEIGHT_DECAY=0.0001,
                       WEIGHT_DECAY_NORM=0.0, MOMENTUM=0.9, BETAS=(0.9, 0.999), EPS=1e-8, AMSGRAD=False),
        CLIP_GRADIENTS=dict(ENABLED=False, CLIP_TYPE="value", CLIP_VALUE=1.0, NORM_TYPE=2.0),
        CHECKPOINT_PERIOD=5000,
        IMS_PER_BATCH=16,
        IMS_PER_DEVICE=2,
        # Each process's IMS_PER_DEVICE images are run as this many forward/backward passes whose
        # gradients are accumulated before one optimizer step (same batch and LR, less memory).
        BATCH_SUBDIVISIONS=1,
    ),
    TEST=dict(
        EVAL_PERIOD=0,
        DETECTIONS_PER_IMAGE=100,
        # Test-time augmentation (cvpods' keys and defaults): every short edge of MIN_SIZES (long edge
        # at most MAX_SIZE), each also flipped with FLIP; see ifr.modeling.tta.
        AUG=dict(ENABLED=False, MIN_SIZES=(400, 500, 600, 700, 800, 900, 1000, 1100, 1200), MAX_SIZE=4000, FLIP=True),
        # [task, metric, value, tolerance] (cvpods / detectron2), optionally a 5th entry naming the
        # dataset it holds for: checked after evaluating one model; a mismatch fails the command.
        EXPECTED_RESULTS=[],
        # Not in cvpods: evaluate the masks the mask head predicts on the ground-truth boxes (with their
        # true classes, score 1) instead of the detections; box AP is then 100 by construction.
        ORACLE_BOXES=False,
        # Not in cvpods: evaluate only the first MAX_IMAGES images of each test set (0: all), for smoke
        # runs; the log says so, metrics.json records the count (eval/images) and EXPECTED_RESULTS is skipped.
        MAX_IMAGES=0,
    ),
    TRAINER=dict(WINDOW_SIZE=20, FP16=dict(ENABLED=False)),
    OUTPUT_DIR="./output",
    SEED=-1,
    CUDNN_BENCHMARK=False,
    VIS_PERIOD=0,
)


class RCNNFPNConfig(BaseConfig):
    """cvpods' R-CNN + FPN defaults (see the module docstring)."""

    def __init__(self):
        super().__init__()
        self._register_configuration(_RCNN_FPN_DEFAULTS, new_keys=True)
