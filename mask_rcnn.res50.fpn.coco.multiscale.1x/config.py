"""Mask R-CNN R50-FPN with the standard mask head of four 3x3 convs, multi-scale training, 1x schedule: the
paper's baseline (35.3 mask AP), cvpods' mask_rcnn.res50.fpn.coco.multiscale.1x."""
from ifr.config import RCNNFPNConfig, experiment_output_dir
from ifr.evaluation import expected

_config_dict = dict(
    MODEL=dict(
        WEIGHTS="detectron2://ImageNetPretrained/MSRA/R-50.pkl",
        MASK_ON=True,
        RESNETS=dict(DEPTH=50),
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
        )
    ),
    # The paper's COCO val2017 mask AP of Mask R-CNN (it quotes the AP only): `sh pods_test.sh MODEL.WEIGHTS
    # <model_final.pth>` fails unless it reproduces it (within ifr.evaluation.PUBLISHED_TOLERANCE).
    TEST=dict(EXPECTED_RESULTS=expected("segm", "coco_2017_val", AP=35.3)),
    OUTPUT_DIR=experiment_output_dir(__file__),
)


class MaskRCNNConfig(RCNNFPNConfig):
    def __init__(self):
        super().__init__()
        self._register_configuration(_config_dict)


config = MaskRCNNConfig()
