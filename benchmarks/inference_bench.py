"""Inference time per image of the experiments' models against plain Mask R-CNN, side by side.

Every model is built at full size from its experiment folder's config (ResNet-50-FPN, 80 classes)
with seeded random weights (FrozenBN statistics calibrated on the first image so activations stay
finite), and run on the same random 800 x 1067 images (the COCO test size of a 480 x 640 image). The RoI heads keep every detection (score threshold 0, 100 per image), so every
mask head sees exactly 100 RoIs per image and the mask-head columns compare equal work. The IFR
block at random initialisation is a stand-in for trained weights (its solves take the maximum
F_THRES steps more often than a trained block's).

Run (in the virtual environment): ``python benchmarks/inference_bench.py [--images 2] [--repeats 2]
[--batch-size 1] [--device cpu|cuda] [--tf32 off|on] [--size 800 1067]`` (``--batch-size``: images per
forward call; times are per image; ``--tf32``: torch's global TF32 switches for convolutions and
matmuls, the fixed-point solves staying in IEEE float32 either way; ``--size``: a smaller image for a
quick run). Models run in turns within each repeat, so the ratio columns compare times measured side
by side. On CUDA every time is taken after ``torch.cuda.synchronize`` and the peak memory of each
model's passes is reported.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from tabulate import tabulate
from torchvision.ops import FrozenBatchNorm2d

from ifr.deq.precision import set_tf32
from ifr.modeling import build_generalized_rcnn
from ifr.tools.experiment import load_experiment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (experiment folder, mask head override for the plain baseline or None for the folder's net.py)
MODELS = {
    "Mask R-CNN, 4-conv head": ("mask_rcnn.ifr.res50.fpn.coco.multiscale.1x", "conv"),
    "weight-sharing (block x4)": ("mask_rcnn.res50.fpn.coco.multiscale.weight_sharing.1x", None),
    "IFR": ("mask_rcnn.ifr.res50.fpn.coco.multiscale.1x", None),
    "IFR cascade": ("cascade_rcnn.ifr.res50.fpn.coco.800size.1x", None),
}


def calibrate_frozen_bn(model: torch.nn.Module, image: dict) -> None:
    """Sets every FrozenBN's statistics to the channel mean/variance of its input on ``image`` (in
    network order, so each layer sees already-normalised inputs). Random weights with identity
    statistics make a 50-layer ResNet's activations overflow; calibrated, they stay finite."""
    def calibrate(module, inputs):
        x = inputs[0].transpose(0, 1).flatten(1)
        module.running_mean.copy_(x.mean(dim=1))
        module.running_var.copy_(x.var(dim=1) + 1e-5)

    hooks = [m.register_forward_pre_hook(calibrate) for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    with torch.no_grad():
        model.backbone(model.preprocess_image([image])[0])
    for hook in hooks:
        hook.remove()


def build(folder: str, mask_head: str | None, device: str) -> torch.nn.Module:
    config, build_model = load_experiment(os.path.join(ROOT, folder))
    config.merge_from_list(["MODEL.DEVICE", device, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
                            "TEST.DETECTIONS_PER_IMAGE", "100"])
    torch.manual_seed(0)
    model = build_generalized_rcnn(config, mask_head=mask_head) if mask_head else build_model(config)
    return model.to(device).eval()


class HeadTimer:
    """Accumulates the wall time spent in one module's forward calls, and the fixed-point solver steps
    of its refinement (if it has one)."""

    def __init__(self, module: torch.nn.Module, device: str):
        self.device, self.total, self._start = device, 0.0, 0.0
        self.solver_steps: list[int] = []
        module.register_forward_pre_hook(self._begin)
        module.register_forward_hook(self._end)

    def _sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def _begin(self, module, inputs) -> None:
        self._sync()
        self._start = time.perf_counter()

    def _end(self, module, inputs, output) -> None:
        self._sync()
        self.total += time.perf_counter() - self._start
        stats = getattr(getattr(module, "refinement", None), "last_stats", None)
        if stats is not None:
            self.solver_steps.append(stats.iterations)


class PeakMemory:
    """Peak CUDA memory (MiB) of the passes of one model ("-" on the CPU)."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.peaks: dict[str, float] = {}

    def start(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()

    def stop(self, name: str) -> None:
        if self.cuda:
            self.peaks[name] = max(self.peaks.get(name, 0.0), torch.cuda.max_memory_allocated() / 2 ** 20)

    def column(self, name: str) -> str:
        return f"{self.peaks[name]:.0f}" if name in self.peaks else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward call")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tf32", choices=("off", "on"), default="off",
                        help="torch's global TF32 switches (the solves stay IEEE float32)")
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1067), metavar=("H", "W"))
    args = parser.parse_args()
    set_tf32(args.tf32 == "on")
    height, width = args.size
    generator = torch.Generator().manual_seed(0)
    images = [{"image": torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator),
               "height": height, "width": width} for _ in range(args.images)]
    models = {name: build(folder, head, args.device) for name, (folder, head) in MODELS.items()}
    for model in models.values():
        calibrate_frozen_bn(model, images[0])
    timers = {name: HeadTimer(model.roi_heads.mask_head, args.device) for name, model in models.items()}
    totals: dict[str, list[float]] = {name: [] for name in models}
    heads: dict[str, list[float]] = {name: [] for name in models}
    detections: dict[str, set[int]] = {name: set() for name in models}
    memory = PeakMemory(args.device)
    with torch.no_grad():
        for model in models.values():  # warm-up
            model([images[0]])
        for _ in range(args.repeats):
            for name, model in models.items():
                for first in range(0, len(images), args.batch_size):
                    batch = images[first:first + args.batch_size]
                    timers[name].total = 0.0
                    memory.start()
                    start = time.perf_counter()
                    outputs = model(batch)
                    if args.device.startswith("cuda"):
                        torch.cuda.synchronize()
                    memory.stop(name)
                    totals[name].append((time.perf_counter() - start) / len(batch))
                    heads[name].append(timers[name].total / len(batch))
                    detections[name].update(len(out["instances"]["scores"]) for out in outputs)
    base_total = statistics.median(totals[next(iter(models))])
    base_head = statistics.median(heads[next(iter(models))])
    rows = []
    for name in models:
        total, head = statistics.median(totals[name]), statistics.median(heads[name])
        steps = timers[name].solver_steps
        rows.append([name, f"{total:.3f}", f"{head:.3f}", f"{head / total:.0%}", f"{total / base_total:.2f}",
                     f"{head / base_head:.2f}", "/".join(map(str, sorted(detections[name]))),
                     f"{sum(steps) / len(steps):.1f}" if steps else "-", memory.column(name)])
    print(f"device {args.device}, {torch.get_num_threads()} threads, torch {torch.__version__}, TF32 {args.tf32}, "
          f"{args.images} images x {args.repeats} repeats, batches of {args.batch_size}, {height} x {width}, "
          "median per image")
    print(tabulate(rows, headers=["model", "s / image", "mask head s / image", "head share", "time vs plain",
                                  "head vs plain", "detections", "solver steps", "peak MiB"], tablefmt="pipe"))


if __name__ == "__main__":
    main()
