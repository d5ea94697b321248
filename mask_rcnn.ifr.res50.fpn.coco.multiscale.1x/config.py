"""Mask R-CNN R50-FPN with the IFR mask head, multi-scale training, 1x schedule (36.3 mask AP in the paper)."""
from ifr.config import RCNNFPNConfig, experiment_output_dir

_config_dict = dict(
    MODEL=dict(
        WEIGHTS="detectron2://ImageNetPretrained/MSRA/R-50.pkl",
        MASK_ON=True,
        RESNETS=dict(DEPTH=50),
        # The IFR head's settings (PRETRAINED_STEPS 50000, F_SOLVER broyden, F_THRES / B_THRES 15,
        # F_TOL / B_TOL 1e-4, ...) are the base config's MODEL.ROI_MASK_HEAD defaults; override them
        # here or on the command line. For the released checkpoints' exact solve:
        # MODEL.ROI_MASK_HEAD.F_SOLVER broyden_cvpods MODEL.ROI_MASK_HEAD.F_TOL 1e-5.
    ),
    DATASETS=dict(TRAIN=("coco_2017_train",), TEST=("coco_2017_val",)),
    SOLVER=dict(
        LR_SCHEDULER=dict(STEPS=(60000, 80000), MAX_ITER=90000),
        OPTIMIZER=dict(BASE_LR=0.02),
        IMS_PER_BATCH=16,
    ),
    INPUT=dict(
        AUG=dict(
            TRAIN_PIPELINES=[
                ("ResizeShortestEdge", dict(short_edge_length=(640, 672, 704, 736, 768, 800), max_size=1333,
                                            sample_style="choice")),
                ("RandomFlip", dict()),
            ],
            TEST_PIPELINES=[
                ("ResizeShortestEdge", dict(short_edge_length=800, max_size=1333, sample_style="choice")),
            ],
        )
    ),
    OUTPUT_DIR=experiment_output_dir(__file__),
)


class MaskRCNNConfig(RCNNFPNConfig):
    def __init__(self):
        super().__init__()
        self._register_configuration(_config_dict)


config = MaskRCNNConfig()
