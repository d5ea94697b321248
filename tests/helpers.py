"""Constants and helpers shared by the end-to-end tests."""
import contextlib
import os
import subprocess
import sys
from typing import Iterator

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


_HOLDER = """import sys
from ifr.utils.run_lock import claim_run_folder
with claim_run_folder(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
"""


@contextlib.contextmanager
def holding_run_folder(tmp_path, folder) -> Iterator[subprocess.Popen]:
    """Another process holding the run folder ``folder`` (``claim_run_folder``) while the block runs;
    it lets go (its stdin closed) and is waited for on leaving the block, unless it was killed meanwhile."""
    script = tmp_path / "hold_run_folder.py"
    script.write_text(_HOLDER)
    holder = subprocess.Popen([sys.executable, str(script), str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.stdin.close()
        holder.wait()
