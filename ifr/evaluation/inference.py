"""Runs a model over a test loader, feeding an evaluator, with a progress bar and timing."""
from __future__ import annotations

import datetime
import logging
import time

import torch
from tqdm import tqdm

logger = logging.getLogger(__name__)


def inference_on_dataset(model: torch.nn.Module, loader, evaluator, show_progress: bool = True) -> dict:
    """Evaluates ``model`` (switched to eval mode for the call) on every batch of ``loader``."""
    total = len(loader)
    logger.info("Start inference on %d images", total)
    evaluator.reset()
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    compute = 0.0
    try:
        with torch.no_grad():
            for inputs in tqdm(loader, total=total, desc="inference", disable=not show_progress, mininterval=2.0,
                               dynamic_ncols=True):
                tick = time.perf_counter()
                outputs = model(inputs)
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                compute += time.perf_counter() - tick
                evaluator.process(inputs, outputs)
    finally:
        model.train(was_training)
    elapsed = time.perf_counter() - start
    logger.info("Total inference time: %s (%.4f s / image); pure compute time: %s (%.4f s / image)",
                datetime.timedelta(seconds=int(elapsed)), elapsed / max(total, 1),
                datetime.timedelta(seconds=int(compute)), compute / max(total, 1))
    return evaluator.evaluate()
