"""Runs a model over a test loader, feeding an evaluator, with a progress bar and timing."""
from __future__ import annotations

import datetime
import logging
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

from ifr.deq import EquilibriumRefinement
from ifr.deq.unconverged import UnconvergedSolves

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferenceTiming:
    """Seconds spent over ``images`` images: in all (data loading included) and in the model alone."""

    images: int
    total_s: float
    compute_s: float

    @property
    def compute_per_image(self) -> float:
        return self.compute_s / max(self.images, 1)


def _counting_solves(unconverged: UnconvergedSolves, name: str):
    """A forward hook counting an equilibrium layer's solve (every call: TTA runs the model per view)."""
    tag = (name or "refinement").replace("roi_heads.", "")

    def count(module, args, output) -> None:
        if module.last_stats is not None:  # None while the layer runs unrolled
            unconverged.add(tag, "forward", module.last_stats)
    return count


def run_inference(model: torch.nn.Module, loader, evaluator, show_progress: bool = True) -> InferenceTiming:
    """Feeds ``evaluator.process`` with the model's outputs (eval mode, no grad) on every batch."""
    total = len(loader)
    logger.info("Start inference on %d images", total)
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    compute = 0.0
    on_gpu = next(model.parameters()).device.type == "cuda"
    # Test-time solves that end above their tolerance: the warning training gives, once at the end.
    unconverged = UnconvergedSolves()
    watched = [layer.register_forward_hook(_counting_solves(unconverged, name))
               for name, layer in model.named_modules() if isinstance(layer, EquilibriumRefinement)]
    try:
        with torch.no_grad():
            for inputs in tqdm(loader, total=total, desc="inference", disable=not show_progress, mininterval=2.0,
                               dynamic_ncols=True):
                tick = time.perf_counter()
                outputs = model(inputs)
                if on_gpu:  # the time of the work queued, not of queueing it
                    torch.cuda.synchronize()
                compute += time.perf_counter() - tick
                evaluator.process(inputs, outputs)
    finally:
        model.train(was_training)
        for hook in watched:
            hook.remove()
    unconverged.warn(f"this evaluation ({total} batches)")
    timing = InferenceTiming(total, time.perf_counter() - start, compute)
    logger.info("Total inference time: %s (%.4f s / image); pure compute time: %s (%.4f s / image)",
                datetime.timedelta(seconds=int(timing.total_s)), timing.total_s / max(total, 1),
                datetime.timedelta(seconds=int(compute)), timing.compute_per_image)
    return timing


def inference_on_dataset(model: torch.nn.Module, loader, evaluator, show_progress: bool = True) -> dict:
    """Evaluates ``model`` on every batch of ``loader``; the evaluator's results."""
    evaluator.reset()
    run_inference(model, loader, evaluator, show_progress)
    return evaluator.evaluate()
