"""Training step time of the experiments' models against plain Mask R-CNN, side by side.

Every model is built at full size from its experiment folder's config (ResNet-50-FPN, 80 classes) with
seeded random weights (FrozenBN statistics calibrated as in ``inference_bench.py``) and trained for a
few SGD steps on the same batch: random 800 x 1067 images with ``--objects`` random boxes each, whose
masks are the boxes' inscribed ellipses (every ground-truth box is a positive RoI, so the mask heads
see a realistic number of RoIs although the random RPN proposes few good boxes). The IFR head is timed
in both phases of its schedule: unrolled (iterations before PRETRAINED_STEPS) and implicit (after).

Run (in the virtual environment): ``python benchmarks/training_bench.py [--images 2] [--steps 3]
[--device cpu|cuda] [--fp16] [--size 800 1067]`` (``--fp16``: autocast, float16 with loss scaling on
CUDA, bfloat16 on the CPU, as TRAINER.FP16.ENABLED trains; the batch is moved to the device once,
before timing). Models run in turns, so the ratio column compares times measured side by side.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from tabulate import tabulate

from inference_bench import build, calibrate_frozen_bn

# name -> (experiment folder, mask head override or None for the folder's net.py, training phase)
MODELS = {
    "Mask R-CNN, 4-conv head": ("mask_rcnn.ifr.res50.fpn.coco.multiscale.1x", "conv", "any"),
    "weight-sharing (block x4)": ("mask_rcnn.res50.fpn.coco.multiscale.weight_sharing.1x", None, "any"),
    "IFR, unrolled phase": ("mask_rcnn.ifr.res50.fpn.coco.multiscale.1x", None, "unrolled"),
    "IFR, implicit phase": ("mask_rcnn.ifr.res50.fpn.coco.multiscale.1x", None, "implicit"),
}


def random_batch(images: int, objects: int, generator: torch.Generator, height: int = 800,
                 width: int = 1067) -> list[dict]:
    batch = []
    for _ in range(images):
        extent = min(200.0, height / 2, width / 2)
        corners = torch.rand(objects, 2, generator=generator) * torch.tensor([width - extent, height - extent])
        sizes = extent / 5 + torch.rand(objects, 2, generator=generator) * extent * 0.8
        boxes = torch.cat([corners, corners + sizes], dim=1)
        ys = torch.arange(height).view(1, -1, 1) + 0.5
        xs = torch.arange(width).view(1, 1, -1) + 0.5
        cx, cy = ((boxes[:, 0] + boxes[:, 2]) / 2).view(-1, 1, 1), ((boxes[:, 1] + boxes[:, 3]) / 2).view(-1, 1, 1)
        rx, ry = (sizes[:, 0] / 2).view(-1, 1, 1), (sizes[:, 1] / 2).view(-1, 1, 1)
        masks = ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1
        batch.append({"image": torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator),
                      "height": height, "width": width,
                      "instances": {"boxes": boxes, "classes": torch.randint(0, 80, (objects,), generator=generator),
                                    "masks": masks}})
    return batch


class MaskRoICounter:
    """Counts the RoIs entering the mask head in its most recent call."""

    def __init__(self, head: torch.nn.Module):
        self.count = 0
        head.register_forward_pre_hook(self._count)

    def _count(self, module, inputs) -> None:
        self.count = len(inputs[0])


def on_device(batch: list[dict], device: str) -> list[dict]:
    """The batch's tensors moved to ``device`` (so the timed steps do not include the copies)."""
    return [{k: ({n: t.to(device) for n, t in v.items()} if isinstance(v, dict) else
                 v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in image.items()} for image in batch]


def training_iteration(model: torch.nn.Module, phase: str) -> int:
    """The global iteration that puts an IFR head in ``phase`` (other heads ignore it)."""
    pretrained_steps = getattr(getattr(model.roi_heads.mask_head, "refinement", None), "pretrained_steps", 0)
    return pretrained_steps if phase == "implicit" else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2, help="images per batch")
    parser.add_argument("--objects", type=int, default=64, help="ground-truth objects per image")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per model (after one warm-up)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--fp16", action="store_true", help="mixed precision, as TRAINER.FP16.ENABLED")
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1067), metavar=("H", "W"))
    args = parser.parse_args()
    height, width = args.size
    batch = on_device(random_batch(args.images, args.objects, torch.Generator().manual_seed(0), height, width),
                      args.device)
    device_type = torch.device(args.device).type
    scalers = {}
    models = {}
    for name, (folder, head, phase) in MODELS.items():
        model = build(folder, head, args.device)
        calibrate_frozen_bn(model, batch[0])
        models[name] = (model.train(), phase)
        # float16 gradients need loss scaling; bfloat16 (the CPU's autocast type) does not
        scalers[name] = torch.amp.GradScaler(device_type, enabled=args.fp16 and device_type == "cuda")
    counters = {name: MaskRoICounter(model.roi_heads.mask_head) for name, (model, _) in models.items()}
    optimizers = {name: torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
                  for name, (model, _) in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    solver_steps: dict[str, list[str]] = {name: [] for name in models}
    for step in range(args.steps + 1):
        for name, (model, phase) in models.items():
            start = time.perf_counter()
            with torch.autocast(device_type, enabled=args.fp16):
                losses = model(batch, iteration=training_iteration(model, phase))
            optimizers[name].zero_grad()
            scalers[name].scale(sum(losses.values())).backward()
            scalers[name].step(optimizers[name])
            scalers[name].update()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            if step > 0:  # the first step is a warm-up
                times[name].append(time.perf_counter() - start)
                refinement = getattr(model.roi_heads.mask_head, "refinement", None)
                if refinement is not None and refinement.last_stats is not None:
                    backward = refinement.backward_strategy.last_stats
                    solver_steps[name].append(f"{refinement.last_stats.iterations}/{backward.iterations}")
    base = statistics.median(times[next(iter(models))])
    rows = []
    for name in models:
        median = statistics.median(times[name])
        rows.append([name, f"{median:.2f}", f"{median / base:.2f}", counters[name].count,
                     " ".join(solver_steps[name]) or "-"])
    print(f"device {args.device}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"{'mixed precision' if args.fp16 else 'float32'}, {args.images} images x {height} x {width} per batch, "
          f"{args.objects} objects per image, median of {args.steps} steps")
    print(tabulate(rows, headers=["model", "s / step", "time vs plain", "mask-head RoIs",
                                  "solver steps fwd/bwd"], tablefmt="pipe"))


if __name__ == "__main__":
    main()
