"""Constants shared by the end-to-end tests."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDERS = {
    "baseline": "mask_rcnn.res50.fpn.coco.multiscale.1x",
    "ifr": "mask_rcnn.ifr.res50.fpn.coco.multiscale.1x",
    "weight_sharing": "mask_rcnn.res50.fpn.coco.multiscale.weight_sharing.1x",
    "cascade": "cascade_rcnn.ifr.res50.fpn.coco.800size.1x",
}
VAL_SUBSET = "synthetic_shapes_val_first10"
# Seconds-sized version of the quickstart: tiny images, channels and RoI batches.
TINY = ["MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_MASK_HEAD.CONV_DIM", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32", "MODEL.RPN.BATCH_SIZE_PER_IMAGE", "64",
        "INPUT.AUG.TRAIN_PIPELINES", "[('ResizeShortestEdge', {'short_edge_length': (64,), 'max_size': 128, "
                                     "'sample_style': 'choice'}), ('RandomFlip', {})]",
        "INPUT.AUG.TEST_PIPELINES", "[('ResizeShortestEdge', {'short_edge_length': 64, 'max_size': 128, "
                                    "'sample_style': 'choice'})]",
        "DATASETS.TEST", f"('{VAL_SUBSET}',)", "DATALOADER.NUM_WORKERS", "0",
        "TRAINER.WINDOW_SIZE", "1", "SOLVER.LR_SCHEDULER.WARMUP_ITERS", "2", "SOLVER.OPTIMIZER.BASE_LR", "0.01"]
