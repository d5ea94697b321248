"""What every configuration key means and which component reads it: the source of the generated
configuration reference (``python -m ifr.tools.config_reference --write docs/configuration.md``).

A key added to ``RCNNFPNConfig`` needs a line in ``DESCRIPTIONS`` (the test suite names any key without
one); its reader comes from the longest matching prefix in ``READERS`` unless ``READ_BY`` names it.
Whether other values are refused comes from ``ifr.config.support.UNSUPPORTED``, not from here.
"""
from __future__ import annotations

# Dotted prefix -> the code that reads the keys under it (the longest matching prefix wins).
READERS = {
    "MODEL": "ifr/modeling/build.py",
    "MODEL.DEVICE": "ifr/engine/defaults.py",
    "MODEL.WEIGHTS": "ifr/checkpoint/loading.py",
    "MODEL.BACKBONE": "ifr/modeling/backbone.py",
    "MODEL.RESNETS": "ifr/modeling/backbone.py",
    "MODEL.FPN": "ifr/modeling/backbone.py",
    "MODEL.ANCHOR_GENERATOR": "ifr/modeling/anchor_generator.py",
    "MODEL.PROPOSAL_GENERATOR": "ifr/modeling/rpn.py",
    "MODEL.RPN": "ifr/modeling/rpn.py",
    "MODEL.ROI_HEADS": "ifr/modeling/roi_heads.py",
    "MODEL.ROI_BOX_HEAD": "ifr/modeling/box_head.py",
    "MODEL.ROI_BOX_CASCADE_HEAD": "ifr/modeling/cascade_roi_heads.py",
    "MODEL.ROI_MASK_HEAD": "ifr/modeling/mask_head.py",
    "INPUT": "ifr/data/build.py",
    "DATASETS": "ifr/data/build.py",
    "DATALOADER": "ifr/data/build.py",
    "SOLVER": "ifr/solver/build.py",
    "TEST": "ifr/engine/defaults.py",
    "TRAINER": "ifr/engine/defaults.py",
    "OUTPUT_DIR": "ifr/engine/defaults.py",
    "SEED": "ifr/engine/defaults.py",
    "CUDNN_BENCHMARK": "ifr/engine/defaults.py",
    "VIS_PERIOD": "ifr/config/support.py",
}

# Keys whose reader is not the one of their prefix.
READ_BY = {
    "MODEL.PIXEL_MEAN": "ifr/modeling/meta_arch.py",
    "MODEL.PIXEL_STD": "ifr/modeling/meta_arch.py",
    "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION": "ifr/modeling/roi_heads.py",
    "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO": "ifr/modeling/roi_heads.py",
    "MODEL.ROI_BOX_HEAD.POOLER_TYPE": "ifr/modeling/poolers.py",
    "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION": "ifr/modeling/roi_heads.py",
    "MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO": "ifr/modeling/roi_heads.py",
    "MODEL.ROI_MASK_HEAD.POOLER_TYPE": "ifr/modeling/poolers.py",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST": "ifr/modeling/box_head.py",
    "MODEL.ROI_HEADS.NMS_THRESH_TEST": "ifr/modeling/box_head.py",
    "INPUT.FORMAT": "ifr/data/transforms.py, ifr/modeling/meta_arch.py",
    "SOLVER.LR_SCHEDULER": "ifr/solver/lr_scheduler.py",
    "SOLVER.LR_SCHEDULER.MAX_ITER": "ifr/engine/train_loop.py",
    "SOLVER.CHECKPOINT_PERIOD": "ifr/engine/defaults.py",
    "SOLVER.IMS_PER_BATCH": "ifr/engine/defaults.py",
    "SOLVER.IMS_PER_DEVICE": "ifr/engine/defaults.py",
    "SOLVER.BATCH_SUBDIVISIONS": "ifr/engine/train_loop.py",
    "TEST.DETECTIONS_PER_IMAGE": "ifr/modeling/box_head.py",
    "TEST.AUG": "ifr/modeling/tta.py",
    "TEST.EXPECTED_RESULTS": "ifr/evaluation/expected_results.py",
    "TEST.ORACLE_BOXES": "ifr/modeling/oracle.py",
    "TEST.MAX_IMAGES": "ifr/data/build.py",
    "DATALOADER.SKIP_CORRUPT_IMAGES": "ifr/data/mapper.py",
}

DESCRIPTIONS = {
    "MODEL.DEVICE": "`cuda`, `cuda:N` or `cpu`; without a GPU a `cuda` run says so once and uses the CPU",
    "MODEL.WEIGHTS": "initial weights: a local `.pth` / `.pkl` in any naming of [weights](weights.md), or "
                     "`detectron2://X` looked up in `$IFR_CACHE`; empty: random init",
    "MODEL.AS_PRETRAIN": "cvpods' self-supervised pre-training mode",
    "MODEL.PIXEL_MEAN": "per-channel mean subtracted from the input, in INPUT.FORMAT's channel order",
    "MODEL.PIXEL_STD": "per-channel divisor of the input (1: MSRA / cvpods weights)",
    "MODEL.LOAD_PROPOSALS": "read precomputed proposals instead of running the RPN",
    "MODEL.MASK_ON": "build and train a mask head (the folders set True)",
    "MODEL.KEYPOINT_ON": "keypoint head",
    "MODEL.NMS_TYPE": "NMS variant of the heads",
    "MODEL.BACKBONE.FREEZE_AT": "stages frozen from the bottom: 0 none, 1 the stem, 2 stem and res2",
    "MODEL.RESNETS.DEPTH": "ResNet depth (18, 34, 50, 101, 152); the folders set 50",
    "MODEL.RESNETS.OUT_FEATURES": "trunk stages returned; must cover MODEL.FPN.IN_FEATURES",
    "MODEL.RESNETS.NUM_GROUPS": "groups of the 3x3 convs (ResNeXt: 32)",
    "MODEL.RESNETS.NORM": "trunk normalisation: FrozenBN, BN, GN",
    "MODEL.RESNETS.ZERO_INIT_RESIDUAL": "last norm of each residual branch initialised to zero",
    "MODEL.RESNETS.WIDTH_PER_GROUP": "channels per group of the 3x3 convs (ResNeXt 32x4d: 4)",
    "MODEL.RESNETS.STRIDE_IN_1X1": "stride on the 1x1 conv (MSRA / cvpods weights) instead of the 3x3 (torchvision)",
    "MODEL.RESNETS.RES5_DILATION": "dilation of res5",
    "MODEL.RESNETS.RES2_OUT_CHANNELS": "res2 output width, checked against the trunk (256, or 64 for ResNet-18/34)",
    "MODEL.RESNETS.STEM_OUT_CHANNELS": "stem output width",
    "MODEL.RESNETS.DEEP_STEM": "three 3x3 convs instead of the 7x7 stem",
    "MODEL.FPN.IN_FEATURES": "trunk stages the FPN reads",
    "MODEL.FPN.OUT_CHANNELS": "FPN width (every level)",
    "MODEL.FPN.NORM": "norm of the FPN convs: \"\" or GN",
    "MODEL.FPN.FUSE_TYPE": "how the top-down and lateral paths merge",
    "MODEL.FPN.BLOCK_IN_FEATURES": "input of the top block that makes p6",
    "MODEL.ANCHOR_GENERATOR.SIZES": "anchor sizes, one list per RPN level",
    "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS": "anchor aspect ratios (height / width), one list for all levels",
    "MODEL.ANCHOR_GENERATOR.OFFSET": "anchor centre offset in units of the stride (cvpods: 0, no rounding)",
    "MODEL.PROPOSAL_GENERATOR.NAME": "proposal generator",
    "MODEL.PROPOSAL_GENERATOR.MIN_SIZE": "proposals smaller than this (pixels) are dropped",
    "MODEL.RPN.IN_FEATURES": "FPN levels the RPN runs on",
    "MODEL.RPN.BOUNDARY_THRESH": "anchors crossing the border by more than this are ignored (-1: keep all)",
    "MODEL.RPN.IOU_THRESHOLDS": "anchor matching: below the first background, above the second foreground",
    "MODEL.RPN.IOU_LABELS": "labels of the matching intervals",
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE": "anchors sampled per image for the RPN losses",
    "MODEL.RPN.POSITIVE_FRACTION": "largest foreground fraction of those anchors",
    "MODEL.RPN.BBOX_REG_WEIGHTS": "box-delta weights (dx, dy, dw, dh)",
    "MODEL.RPN.SMOOTH_L1_BETA": "smooth-L1 beta of the box loss (0: L1)",
    "MODEL.RPN.LOSS_WEIGHT": "weight of both RPN losses",
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN": "top-scoring anchors kept per level before NMS, training",
    "MODEL.RPN.PRE_NMS_TOPK_TEST": "the same at test time",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN": "proposals kept per image after NMS, training",
    "MODEL.RPN.POST_NMS_TOPK_TEST": "the same at test time",
    "MODEL.RPN.NMS_THRESH": "IoU threshold of the RPN's NMS (on raw logits)",
    "MODEL.ROI_HEADS.IN_FEATURES": "FPN levels the poolers read",
    "MODEL.ROI_HEADS.NUM_CLASSES": "object classes, background excluded",
    "MODEL.ROI_HEADS.IOU_THRESHOLDS": "proposal matching threshold (foreground at or above)",
    "MODEL.ROI_HEADS.IOU_LABELS": "labels of the matching intervals",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": "RoIs sampled per image for the box losses",
    "MODEL.ROI_HEADS.POSITIVE_FRACTION": "largest foreground fraction of those RoIs",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST": "detections scoring below this are dropped",
    "MODEL.ROI_HEADS.NMS_THRESH_TEST": "IoU threshold of the per-class NMS of the detections",
    "MODEL.ROI_HEADS.PROPOSAL_APPEND_GT": "add the ground-truth boxes to the proposals in training",
    "MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS": "box-delta weights of the box head",
    "MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA": "smooth-L1 beta of the box loss (0: L1)",
    "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION": "RoIAlign output size of the box branch",
    "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO": "RoIAlign sampling points per bin (0: adaptive)",
    "MODEL.ROI_BOX_HEAD.POOLER_TYPE": "ROIAlignV2 (aligned) or ROIAlign",
    "MODEL.ROI_BOX_HEAD.NUM_FC": "fully connected layers of the box head",
    "MODEL.ROI_BOX_HEAD.FC_DIM": "their width",
    "MODEL.ROI_BOX_HEAD.NUM_CONV": "3x3 convs before the fcs (cvpods' conv-fc head, e.g. 4conv1fc)",
    "MODEL.ROI_BOX_HEAD.CONV_DIM": "their width",
    "MODEL.ROI_BOX_HEAD.NORM": "norm of those convs: \"\" or GN",
    "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG": "one box regression for all classes (the cascade folder: True)",
    "MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES": "train the mask head on predicted boxes",
    "MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS": "box-delta weights of each cascade stage",
    "MODEL.ROI_BOX_CASCADE_HEAD.IOUS": "matching IoU threshold of each cascade stage",
    "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION": "RoIAlign output size of the mask branch (masks are twice this)",
    "MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO": "RoIAlign sampling points per bin (0: adaptive)",
    "MODEL.ROI_MASK_HEAD.NUM_CONV": "convs of the 4-conv head; the refinement heads' unrolled steps",
    "MODEL.ROI_MASK_HEAD.CONV_DIM": "width of the mask head's features",
    "MODEL.ROI_MASK_HEAD.NORM": "norm of the 4-conv head's convs: \"\" or GN",
    "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK": "one mask for all classes",
    "MODEL.ROI_MASK_HEAD.POOLER_TYPE": "ROIAlignV2 (aligned) or ROIAlign",
    "MODEL.ROI_MASK_HEAD.CHANNELS_LAST": "not in cvpods: on the CPU, compute every mask head in channels_last "
                                         "(same results, faster)",
    "MODEL.ROI_MASK_HEAD.CUDA_CHANNELS_LAST": "the same on CUDA; off: CUDA's GroupNorm returns NCHW, so every block "
                                              "evaluation would copy layouts (unmeasured on a GPU so far)",
    "MODEL.ROI_MASK_HEAD.GN_GROUPS": "GroupNorm groups of the refinement block (weight_sharing and ifr heads)",
    "MODEL.ROI_MASK_HEAD.PRETRAINED_STEPS": "IFR: training iterations in the unrolled form before the implicit one",
    "MODEL.ROI_MASK_HEAD.F_SOLVER": "IFR forward solver: broyden, anderson, fixed_point, broyden_cvpods (the "
                                    "original's, for the released weights)",
    "MODEL.ROI_MASK_HEAD.F_THRES": "IFR forward solver's step limit",
    "MODEL.ROI_MASK_HEAD.F_TOL": "IFR forward tolerance (chosen by measurement, [results](results.md))",
    "MODEL.ROI_MASK_HEAD.B_SOLVER": "IFR with BACKWARD implicit: solver of the adjoint system",
    "MODEL.ROI_MASK_HEAD.B_THRES": "its step limit",
    "MODEL.ROI_MASK_HEAD.B_TOL": "its tolerance",
    "MODEL.ROI_MASK_HEAD.STOP_MODE": "IFR: residual tested against the tolerances: abs `‖f(z)-z‖` or rel "
                                     "(divided by `‖f(z)‖`)",
    "MODEL.ROI_MASK_HEAD.BROYDEN_MEMORY": "solver broyden: rank-one pairs kept before restarting",
    "MODEL.ROI_MASK_HEAD.ANDERSON_MEMORY": "solver anderson: history length",
    "MODEL.ROI_MASK_HEAD.ANDERSON_DAMPING": "solver anderson: mixing damping",
    "MODEL.ROI_MASK_HEAD.ANDERSON_REGULARIZATION": "solver anderson: regularisation of the Gram matrix",
    "MODEL.ROI_MASK_HEAD.DIVERGENCE_RATIO": "every solver's protective break: a sample whose residual grows "
                                            "past this times its initial one stops",
    "MODEL.ROI_MASK_HEAD.BACKWARD": "IFR gradient: implicit (adjoint solve) or phantom (damped unrolled steps)",
    "MODEL.ROI_MASK_HEAD.PHANTOM_STEPS": "BACKWARD phantom: damped steps from z* differentiated by autograd",
    "MODEL.ROI_MASK_HEAD.PHANTOM_DAMPING": "BACKWARD phantom: their damping",
    "MODEL.ROI_MASK_HEAD.JACOBIAN_WEIGHT": "IFR with BACKWARD implicit: weight of the Jacobian regularisation "
                                           "`loss_jacobian` (Bai et al. 2021), a Hutchinson estimate of the "
                                           "Jacobian's squared Frobenius norm / numel at z*; 0: off (what it costs: "
                                           "[results](results.md#the-refinement-ablation-on-the-built-in-data))",
    "MODEL.ROI_MASK_HEAD.JACOBIAN_FREQUENCY": "fraction of the implicit iterations that are regularised",
    "MODEL.ROI_MASK_HEAD.JACOBIAN_PROBES": "Hutchinson probes of the Jacobian estimate",
    "MODEL.ROI_MASK_HEAD.SOLVE_ALLOW_TF32": "IFR on GPUs: let the forward and adjoint solves use TF32; off: they run "
                                            "in IEEE float32 (TF32's rounding is a floor under the residual at "
                                            "F_TOL 1e-4), the rest of the model follows torch's global setting",
    "MODEL.ROI_MASK_HEAD.CUDA_CHECK_PERIOD": "IFR on CUDA: steps between the solvers' convergence checks (each a "
                                             "host sync); finished RoIs stay frozen in between (broyden_cvpods "
                                             "checks every step)",
    "INPUT.FORMAT": "channel order of the model's input: BGR (MSRA / cvpods weights) or RGB (torchvision)",
    "INPUT.MASK_FORMAT": "how mask targets are made; bitmask: rasterised at image size and cropped by RoIAlign",
    "INPUT.AUG.TRAIN_PIPELINES": "training transforms, (name, arguments) pairs: ResizeShortestEdge, RandomFlip",
    "INPUT.AUG.TEST_PIPELINES": "test transforms (the test size)",
    "DATASETS.TRAIN": "registered dataset names to train on",
    "DATASETS.TEST": "registered dataset names to evaluate on (empty: no evaluation)",
    "DATALOADER.NUM_WORKERS": "loader processes per training process",
    "DATALOADER.ASPECT_RATIO_GROUPING": "batch landscape and portrait images separately",
    "DATALOADER.FILTER_EMPTY_ANNOTATIONS": "drop training images without annotations",
    "DATALOADER.SKIP_CORRUPT_IMAGES": "not in cvpods: train past missing or undecodable images (counted) "
                                      "instead of stopping",
    "SOLVER.LR_SCHEDULER.NAME": "WarmupMultiStepLR or WarmupCosineLR",
    "SOLVER.LR_SCHEDULER.MAX_ITER": "training iterations (rescaled with the number of processes)",
    "SOLVER.LR_SCHEDULER.STEPS": "iterations where the LR is multiplied by GAMMA (multi-step)",
    "SOLVER.LR_SCHEDULER.WARMUP_FACTOR": "LR factor at iteration 0 of the warm-up",
    "SOLVER.LR_SCHEDULER.WARMUP_ITERS": "warm-up length (not rescaled)",
    "SOLVER.LR_SCHEDULER.WARMUP_METHOD": "linear or constant",
    "SOLVER.LR_SCHEDULER.GAMMA": "LR factor at each of STEPS",
    "SOLVER.OPTIMIZER.NAME": "D2SGD / SGD (momentum) or AdamW",
    "SOLVER.OPTIMIZER.BASE_LR": "learning rate for IMS_PER_BATCH images (rescaled with the number of processes)",
    "SOLVER.OPTIMIZER.BIAS_LR_FACTOR": "LR factor of the biases",
    "SOLVER.OPTIMIZER.WEIGHT_DECAY": "weight decay",
    "SOLVER.OPTIMIZER.WEIGHT_DECAY_NORM": "weight decay of norm layers' parameters",
    "SOLVER.OPTIMIZER.MOMENTUM": "SGD momentum",
    "SOLVER.OPTIMIZER.BETAS": "AdamW betas",
    "SOLVER.OPTIMIZER.EPS": "AdamW epsilon",
    "SOLVER.OPTIMIZER.AMSGRAD": "AdamW's AMSGrad variant",
    "SOLVER.CLIP_GRADIENTS.ENABLED": "clip gradients before each step",
    "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": "value or norm",
    "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": "the clipping threshold",
    "SOLVER.CLIP_GRADIENTS.NORM_TYPE": "the norm's order when CLIP_TYPE is norm",
    "SOLVER.CHECKPOINT_PERIOD": "iterations between checkpoints (rescaled with the number of processes)",
    "SOLVER.IMS_PER_BATCH": "images per optimizer step over all processes (the recipe's batch)",
    "SOLVER.IMS_PER_DEVICE": "images per process and step",
    "SOLVER.BATCH_SUBDIVISIONS": "forward/backward passes each process's images are split into (gradient accumulation)",
    "TEST.EVAL_PERIOD": "iterations between evaluations during training (0: at the end only; rescaled with "
                        "the number of processes)",
    "TEST.DETECTIONS_PER_IMAGE": "detections kept per image",
    "TEST.AUG.ENABLED": "evaluate with test-time augmentation",
    "TEST.AUG.MIN_SIZES": "short edges of the augmented views",
    "TEST.AUG.MAX_SIZE": "long-edge limit of those views",
    "TEST.AUG.FLIP": "each view also flipped",
    "TEST.EXPECTED_RESULTS": "[task, metric, value, tolerance(, dataset)] checked after evaluating one model; "
                             "a miss fails the command",
    "TEST.ORACLE_BOXES": "not in cvpods: evaluate the mask head on the ground-truth boxes (mask AP on GT boxes)",
    "TEST.MAX_IMAGES": "not in cvpods: evaluate only the first N images of each test set (0: all), for smoke runs; "
                       "the log warns, metrics.json records `eval/images`, TEST.EXPECTED_RESULTS is not checked",
    "TRAINER.WINDOW_SIZE": "iterations per logged window (log line, metrics, unconverged-solve warning)",
    "TRAINER.FP16.ENABLED": "mixed precision (float16 + grad scaler on GPU, bfloat16 on CPU; the solves stay float32)",
    "OUTPUT_DIR": "where logs, metrics, checkpoints and results go",
    "SEED": "random seed; -1: drawn at start (the drawn value is written to config.json)",
    "CUDNN_BENCHMARK": "torch.backends.cudnn.benchmark",
    "VIS_PERIOD": "training-time visualisation period",
}


def reader_of(key: str) -> str:
    """The component that reads ``key`` (``READ_BY``, else the longest matching prefix of ``READERS``)."""
    parts = key.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in READ_BY:
            return READ_BY[prefix]
        if prefix in READERS:
            return READERS[prefix]
    raise KeyError(f"config key {key} has no reader: add its prefix to READERS in ifr/config/descriptions.py")
