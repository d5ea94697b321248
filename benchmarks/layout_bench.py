"""Memory layout of the mask heads: time and float32 precision of NCHW against channels_last, side by side.

For each mask head (the 4-conv head, the weight-sharing block x4 and the IFR head's implicit solve) on
the same R RoIs of pooled features whose groups have a large mean (offset 30, where PyTorch's CPU
GroupNorm in channels_last loses precision), three layouts:

* ``nchw``: ``MODEL.ROI_MASK_HEAD.CHANNELS_LAST False``;
* ``channels_last``: the default, with the block's ``ShiftedGroupNorm``;
* ``channels_last, plain GroupNorm``: what the default was before (nn.GroupNorm in the block).

Columns: inference time (no grad) and training-step time (forward + backward) relative to NCHW, and the
float32 relative error of the input gradient against float64, per RoI: the median over RoIs, and the
largest (the implicit head solves to 1e-6 so the solve tolerance does not hide the precision). The
largest is dominated by ReLU kinks: where float32 rounding moves one pre-activation across zero,
that RoI's gradient changes by ~1e-3 whatever the layout; the median shows the arithmetic's precision.

Run (in the virtual environment): ``python benchmarks/layout_bench.py [--rois 100] [--repeats 3]``.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import time

import torch
from tabulate import tabulate
from torch import nn

from ifr.config import RCNNFPNConfig
from ifr.deq import norm as deq_norm
from ifr.modeling.mask_head import MASK_HEADS

LAYOUTS = ("nchw", "channels_last", "channels_last, plain GroupNorm")


@contextlib.contextmanager
def plain_group_norm(enabled: bool):
    """The block's GroupNorm without the shift (the fused channels_last kernel as it is)."""
    if not enabled:
        yield
        return
    saved = deq_norm.ShiftedGroupNorm.forward
    deq_norm.ShiftedGroupNorm.forward = nn.GroupNorm.forward
    try:
        yield
    finally:
        deq_norm.ShiftedGroupNorm.forward = saved


def build(head: str, layout: str) -> nn.Module:
    cfg = RCNNFPNConfig()
    cfg.MODEL.ROI_MASK_HEAD.merge(dict(CHANNELS_LAST=layout != "nchw", PRETRAINED_STEPS=0, F_TOL=1e-6, B_TOL=1e-6,
                                       F_THRES=30, B_THRES=30))
    torch.manual_seed(0)
    return MASK_HEADS[head](cfg, 256)


def timed(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure(head: str, layout: str, x: torch.Tensor, upstream: torch.Tensor, repeats: int) -> dict:
    logging.getLogger("ifr").setLevel(logging.ERROR)  # the heads' notes on settings they do not read
    model = build(head, layout)
    with plain_group_norm(layout.endswith("plain GroupNorm")):
        def infer():
            with torch.no_grad():
                model.eval()(x)

        def train_step():
            model.train().zero_grad()
            (model(x.requires_grad_(), iteration=0) * upstream).sum().backward()

        inference, training = timed(infer, repeats), timed(train_step, repeats)
        grads = {}
        for dtype in (torch.float64, torch.float32):
            model = model.to(dtype).train()
            inputs = x.detach().to(dtype).clone().requires_grad_()
            (model(inputs, iteration=0) * upstream.to(dtype)).sum().backward()
            grads[dtype] = inputs.grad.double()
    per_roi = ((grads[torch.float32] - grads[torch.float64]).flatten(1).norm(dim=1)
               / grads[torch.float64].flatten(1).norm(dim=1))
    return {"inference": inference, "training": training, "median": per_roi.median().item(), "max": per_roi.max().item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rois", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    x = torch.randn(args.rois, 256, 14, 14, generator=torch.Generator().manual_seed(1)) + 30
    upstream = torch.randn(args.rois, 80, 28, 28, generator=torch.Generator().manual_seed(2))
    rows = []
    for head in MASK_HEADS:
        results = {layout: measure(head, layout, x.clone(), upstream, args.repeats) for layout in LAYOUTS}
        base = results["nchw"]
        for layout, r in results.items():
            rows.append([head, layout, f"{r['inference']:.3f}", f"{r['inference'] / base['inference']:.2f}",
                         f"{r['training']:.3f}", f"{r['training'] / base['training']:.2f}", f"{r['median']:.1e}",
                         f"{r['max']:.1e}"])
    print(f"{args.rois} RoIs, 256 channels, 14 x 14, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(tabulate(rows, headers=["mask head", "layout", "inference s", "/ nchw", "train step s", "/ nchw",
                                  "grad error median", "grad error max"], tablefmt="github"))


if __name__ == "__main__":
    main()
