"""What the refined box-head tower should normalise with, measured side by side.

    python benchmarks/box_head_norm_bench.py [--width 64] [--rois 32] [--steps 120] [--seeds 0 1]

The v2 box head's tower is 4 x [conv, BatchNorm, ReLU]. Solved to a fixed point, BatchNorm's batch
statistics would change with every iterate (and with the set of RoIs still being solved), so the refined
block needs another choice. Compared here on the same task, seeds and initialisations:

* ``explicit_bn``: the stock tower (4 x [conv, BatchNorm, ReLU]), for reference;
* ``ifr_groupnorm``: ``RefinementTower(form="ifr")``: the IFR block with GroupNorm(32);
* ``ifr_bn_injection``: the IFR block with its three norms as BatchNorm whose batch statistics are
  computed once per forward, on the injection (the block's evaluation at z = 0), and frozen for the
  rest of the solve and its backward (running statistics in eval mode), so the map is per-sample again.

Task: a 7 x 7 RoI-feature classification (5 classes, labels from a fixed random teacher), the tower
then flatten + FC 128 + ReLU + linear, as the box head; Adam, lr 1e-3, batches of ``--rois``, the IFR
forms implicit from the first step (Broyden, 15 steps, tol 1e-4; implicit backward). Reports per variant
(mean over seeds): training loss over the last 10 steps, held-out accuracy in eval mode, forward solver
steps per RoI at the first 10 and last 10 training steps and at eval, and seconds per training step.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from tabulate import tabulate
from torch import nn

from ifr.deq import RefinementTower
from ifr.deq.block import IFRBlock
from ifr.deq.weight_norm import WeightNormConv2d

CLASSES = 5


class InjectionStatsBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics are taken on the first call after ``reset()`` (the
    injection pass) and reused, detached, by every later call until the next reset."""

    def reset(self) -> None:
        self.frozen = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        if getattr(self, "frozen", None) is None:
            mean, var = x.detach().mean((0, 2, 3)), x.detach().var((0, 2, 3), unbiased=False)
            with torch.no_grad():
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(x.detach().var((0, 2, 3), unbiased=True), self.momentum)
            self.frozen = (mean, var)
        mean, var = self.frozen
        return F.batch_norm(x, mean, var, self.weight, self.bias, False, 0.0, self.eps)


def bn_injection_tower(width: int) -> RefinementTower:
    """The "ifr" tower whose block's norms are ``InjectionStatsBatchNorm``; ``forward`` resets and runs
    the injection pass first."""
    tower = RefinementTower(width, 4, "ifr")
    block = tower.refinement.block
    for name in ("gn1", "gn2", "gn3"):
        setattr(block, name, InjectionStatsBatchNorm(width))
    assert isinstance(block, IFRBlock) and isinstance(block.conv1, WeightNormConv2d)
    plain_forward = tower.forward

    def forward(x, iteration=None):
        for module in block.modules():
            if isinstance(module, InjectionStatsBatchNorm):
                module.reset()
        if tower.training:
            block(torch.zeros_like(x), x)  # the injection pass: fixes this forward's statistics
        return plain_forward(x, iteration)

    tower.forward = forward
    return tower


def build(variant: str, width: int, seed: int) -> tuple[nn.Module, RefinementTower | None]:
    torch.manual_seed(seed)
    if variant == "explicit_bn":
        tower = RefinementTower(width, 4, "explicit", norm="batch")
    elif variant == "ifr_groupnorm":
        tower = RefinementTower(width, 4, "ifr", num_groups=32)
    else:
        tower = bn_injection_tower(width)
    head = nn.Sequential(nn.Flatten(), nn.Linear(width * 49, 128), nn.ReLU(), nn.Linear(128, CLASSES))
    return nn.ModuleDict({"tower": tower, "head": head}), tower if variant != "explicit_bn" else None


def task(width: int, count: int, seed: int, sample_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """RoI-like features (clustered around the task's 15 centres, non-negative as after the RoI pooling of
    FPN features) and their labels (each centre's class); ``sample_seed`` draws the samples."""
    centres = torch.randn(CLASSES * 3, width, 7, 7, generator=torch.Generator().manual_seed(1000 + seed))
    generator = torch.Generator().manual_seed(sample_seed)
    which = torch.randint(0, CLASSES * 3, (count,), generator=generator)
    x = (centres[which] + 1.5 * torch.randn(count, width, 7, 7, generator=generator)).relu()
    return x, which % CLASSES


def run(variant: str, width: int, rois: int, steps: int, seed: int) -> dict:
    model, tower = build(variant, width, seed)
    x, y = task(width, rois * 8, seed, sample_seed=seed)
    x_test, y_test = task(width, 256, seed, sample_seed=seed + 100)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    losses, solver_steps = [], []
    start = time.perf_counter()
    model.train()
    for step in range(steps):
        index = torch.randint(0, x.shape[0], (rois,), generator=generator)
        logits = model["head"](model["tower"](x[index], iteration=step))
        loss = F.cross_entropy(logits, y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if tower is not None:
            solver_steps.append(float(tower.refinement.last_stats.sample_steps.float().mean()))
    seconds = (time.perf_counter() - start) / steps
    model.eval()
    with torch.no_grad():
        accuracy = float((model["head"](model["tower"](x_test)).argmax(1) == y_test).float().mean())
    eval_steps = float(tower.refinement.last_stats.sample_steps.float().mean()) if tower is not None else float("nan")
    mean = lambda values: sum(values) / len(values) if values else float("nan")  # noqa: E731
    return {"loss": mean(losses[-10:]), "accuracy": accuracy, "steps_first": mean(solver_steps[:10]),
            "steps_last": mean(solver_steps[-10:]), "steps_eval": eval_steps, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--rois", type=int, default=32)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    rows = []
    for variant in ("explicit_bn", "ifr_groupnorm", "ifr_bn_injection"):
        results = [run(variant, args.width, args.rois, args.steps, seed) for seed in args.seeds]
        means = {k: sum(r[k] for r in results) / len(results) for k in results[0]}
        rows.append([variant, f"{means['loss']:.3f}", f"{means['accuracy']:.3f}", f"{means['steps_first']:.1f}",
                     f"{means['steps_last']:.1f}", f"{means['steps_eval']:.1f}", f"{means['seconds']:.3f}"])
        print(variant, [f"{r['loss']:.3f}/{r['accuracy']:.3f}" for r in results], flush=True)
    print(tabulate(rows, headers=["variant", "train loss (last 10)", "eval accuracy", "solver steps (first 10)",
                                  "solver steps (last 10)", "solver steps (eval)", "s / step"], tablefmt="github"))


if __name__ == "__main__":
    main()
