"""The paper's refinement ablation on the built-in data: the 4-conv mask head, the weight-sharing block
x4 and IFR, the same small model, schedule and data, several seeds.

    python benchmarks/ablation.py [--datasets hard shapes] [--seeds 0 1 2] [--max-iter 800]
                                  [--heads conv weight_sharing ifr] [--jacobian-weights 0 0.5 2]
                                  [--output DIR] [--finished-only]

Each run is the quickstart's small model (``ifr.presets.small_model_overrides``) with the given mask
head; the 4-conv head is as wide as the refinement block (the FPN's 128 channels, as 256 in the paper).
It reports box AP, mask AP, mask AP75, mask AP on the ground-truth boxes (TEST.ORACLE_BOXES), the
mask head's parameters and their ratio to the 4-conv head's, inference time per image and solver
steps per image and per RoI; then the mean and standard deviation over seeds. Finished runs are not
re-run (each leaves ``results.json`` in ``DIR/<dataset>/<head>/seed<k>``; default DIR:
``$IFR_OUTPUT_ROOT/ablation``, else ``output/ablation``); ``--finished-only`` prints the tables of the
finished runs without training the missing ones (e.g. while they train in another shell).

``--jacobian-weights`` adds IFR runs with MODEL.ROI_MASK_HEAD.JACOBIAN_WEIGHT w (head ``ifr_jac<w>``;
0 is the plain ``ifr`` run). The regulariser only acts in the implicit phase, so a regularised run is
the plain run's until PRETRAINED_STEPS: it resumes from the plain run's last checkpoint before then
when that exists (exact resume), and trains only the rest. The training columns (solver steps, seconds
per iteration) are means over the implicit phase, read from the run's metrics.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time

from tabulate import tabulate

from ifr.data import get_dataset_dicts
from ifr.engine import DefaultTrainer, default_setup, evaluate
from ifr.engine.checkpoint import checkpoint_iteration, training_checkpoints
from ifr.modeling import build_generalized_rcnn
from ifr.paths import EXPERIMENTS, output_root
from ifr.presets import small_model_overrides
from ifr.tools.experiment import load_experiment

DATASETS = {"hard": ("synthetic_hard_train", "synthetic_hard_val", 5),
            "shapes": ("synthetic_shapes_train", "synthetic_shapes_val", 3)}
HEADS = ("conv", "weight_sharing", "ifr")
JACOBIAN_PREFIX = "ifr_jac"


def variant_name(head: str, jacobian_weight: float = 0.0) -> str:
    """The run's head name: ``ifr_jac<w>`` for a Jacobian-regularised IFR head, else ``head``."""
    return f"{JACOBIAN_PREFIX}{jacobian_weight:g}" if head == "ifr" and jacobian_weight > 0 else head


def run_config(dataset: str, variant: str, seed: int, max_iter: int, output_dir: str):
    """The config and model builder of one run (``variant``: a head name or ``ifr_jac<w>``)."""
    config, _ = load_experiment(EXPERIMENTS["ifr"])
    config.merge(small_model_overrides(max_iter))
    train, val, classes = DATASETS[dataset]
    head, jacobian_weight = ("ifr", float(variant[len(JACOBIAN_PREFIX):])) \
        if variant.startswith(JACOBIAN_PREFIX) else (variant, 0.0)
    config.merge(dict(DATASETS=dict(TRAIN=(train,), TEST=(val,)), SEED=seed, OUTPUT_DIR=output_dir,
                      MODEL=dict(ROI_HEADS=dict(NUM_CLASSES=classes),
                                 ROI_MASK_HEAD=dict(CONV_DIM=128, JACOBIAN_WEIGHT=jacobian_weight))))
    return config, lambda cfg: build_generalized_rcnn(cfg, mask_head=head)


class SolverSteps:
    """Counts a refinement's forward solver steps over the calls it makes: per call (the batch's
    longest solve) and per RoI."""

    def __init__(self, model):
        head = model.roi_heads.mask_head
        self.refinement = getattr(head, "refinement", None)
        self.steps = self.roi_steps = self.rois = 0
        self._hook = self.refinement.register_forward_hook(self._count) if self.refinement is not None else None

    def remove(self) -> None:
        """Stops counting."""
        if self._hook is not None:
            self._hook.remove()

    def _count(self, module, inputs, output) -> None:
        if module.last_stats is not None:
            self.steps += module.last_stats.iterations
            self.roi_steps += int(module.last_stats.sample_steps.sum())
            self.rois += module.last_stats.sample_steps.numel()


def share_unrolled_phase(config, plain_run: str) -> str | None:
    """Copies into an empty regularised run's folder the plain IFR run's last checkpoint from before
    PRETRAINED_STEPS (the two runs are the same until then); returns the copied path, or None."""
    if training_checkpoints(config.OUTPUT_DIR):
        return None
    earlier = [p for p in training_checkpoints(plain_run)
               if checkpoint_iteration(p, float("inf")) <= config.MODEL.ROI_MASK_HEAD.PRETRAINED_STEPS]
    if not earlier:
        return None
    os.makedirs(config.OUTPUT_DIR, exist_ok=True)
    return shutil.copy(earlier[-1], config.OUTPUT_DIR)


def training_phase_stats(output_dir: str, tag: str = "mask_head.refinement") -> dict:
    """Means over the implicit phase of the run's metrics.json: forward / backward solver steps
    per training iteration and seconds per iteration (None where the run logged none)."""
    rows = [json.loads(line) for line in open(os.path.join(output_dir, "metrics.json")) if line.strip()]
    implicit = [r for r in rows if f"deq/{tag}/forward_iterations" in r]

    def mean(key):
        values = [r[key] for r in implicit if key in r]
        return statistics.mean(values) if values else None

    return {"train_forward_steps": mean(f"deq/{tag}/forward_iterations"),
            "train_backward_steps": mean(f"deq/{tag}/backward_iterations"),
            "train_seconds_per_iteration": mean("time"),
            "loss_jacobian": mean("loss_jacobian")}


def one_run(dataset: str, variant: str, seed: int, max_iter: int, root: str,
            finished_only: bool = False) -> dict | None:
    """The run's results: read when it finished, else trained and evaluated (None with
    ``finished_only``)."""
    out = os.path.join(root, dataset, variant, f"seed{seed}")
    done = os.path.join(out, "results.json")
    if os.path.isfile(done):
        return json.load(open(done))
    if finished_only:
        return None
    config, build_model = run_config(dataset, variant, seed, max_iter, out)
    if variant.startswith(JACOBIAN_PREFIX):
        copied = share_unrolled_phase(config, os.path.join(root, dataset, "ifr", f"seed{seed}"))
        print(f"{variant} seed {seed}: " + (f"resuming from the plain IFR run's {copied}" if copied else
                                            "training from the start (no plain IFR checkpoint to share)"))
    default_setup(config, argparse.Namespace(eval_only=False))
    config.DATASETS.TEST = ()  # evaluated below, timed
    trainer = DefaultTrainer(config, build_model, show_progress=False)
    trainer.resume_or_load(resume=True)
    trainer.train()
    model = trainer.checkpointer.model.eval()
    config.DATASETS.TEST = (DATASETS[dataset][1],)
    steps = SolverSteps(model)
    start = time.perf_counter()
    scores = evaluate(config, model, show_progress=False)
    seconds = time.perf_counter() - start
    images = len(get_dataset_dicts(DATASETS[dataset][1]))
    solves = {"solver_steps_per_image": steps.steps / max(images, 1),  # of this evaluation, not the oracle one
              "solver_steps_per_roi": steps.roi_steps / steps.rois if steps.rois else None}
    config.TEST.ORACLE_BOXES = True
    oracle = evaluate(config, model, show_progress=False)
    mask_head = model.roi_heads.mask_head
    head_parameters = sum(p.numel() for p in mask_head.parameters())
    upsampling = sum(p.numel() for m in (mask_head.deconv, mask_head.predictor) for p in m.parameters())
    result = {"box_AP": scores["bbox"]["AP"], "mask_AP": scores["segm"]["AP"], "mask_AP75": scores["segm"]["AP75"],
              "oracle_mask_AP": oracle["segm"]["AP"], "mask_head_parameters": head_parameters,
              "feature_layer_parameters": head_parameters - upsampling,
              "seconds_per_image": seconds / max(images, 1), **solves}
    with open(done, "w") as f:
        json.dump(result, f, indent=1)
    return result


def _mean_std(values: list[float | None]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def _mean(values: list[float | None], digits: int) -> str:
    values = [v for v in values if v is not None]
    return f"{statistics.mean(values):.{digits}f}" if values else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["hard", "shapes"], choices=sorted(DATASETS))
    parser.add_argument("--heads", nargs="+", default=list(HEADS), choices=HEADS)
    parser.add_argument("--jacobian-weights", nargs="+", type=float, default=[0.0],
                        help="JACOBIAN_WEIGHT values for the IFR head (0: unregularised)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--shapes-seeds", nargs="+", type=int, default=None,
                        help="seeds on the shapes dataset (default: --seeds)")
    parser.add_argument("--max-iter", type=int, default=800)
    parser.add_argument("--output", default=None)
    parser.add_argument("--finished-only", action="store_true",
                        help="report the finished runs only; train none")
    args = parser.parse_args()
    root = args.output or os.path.join(output_root(), "ablation")
    variants = [variant_name(head, w) for head in args.heads for w in (args.jacobian_weights if head == "ifr" else [0])]
    rows, solver_rows, per_seed = [], [], []
    for dataset in args.datasets:
        seeds = args.shapes_seeds if dataset == "shapes" and args.shapes_seeds else args.seeds
        results = {}  # variant -> {seed: results} of the finished runs, variants without any left out
        for variant in variants:
            runs = {seed: one_run(dataset, variant, seed, args.max_iter, root, args.finished_only) for seed in seeds}
            if finished := {seed: r for seed, r in runs.items() if r is not None}:
                results[variant] = finished
        conv = next(iter(results["conv"].values())) if "conv" in results else None
        for variant, by_seed in results.items():
            runs = list(by_seed.values())
            for seed, r in by_seed.items():
                per_seed.append([dataset, variant, seed, *(f"{r[k]:.1f}" for k in ("box_AP", "mask_AP", "mask_AP75",
                                                                                  "oracle_mask_AP"))])
            ratio = (f"{runs[0]['mask_head_parameters'] / conv['mask_head_parameters']:.2f} / "
                     f"{runs[0]['feature_layer_parameters'] / conv['feature_layer_parameters']:.2f}") if conv else "-"
            rows.append([dataset, variant, len(runs), *(_mean_std([r[k] for r in runs]) for k in
                                                        ("box_AP", "mask_AP", "mask_AP75", "oracle_mask_AP")),
                         f"{runs[0]['mask_head_parameters']:,}", ratio,
                         _mean([r["seconds_per_image"] for r in runs], 3)])
            if variant == "ifr" or variant.startswith(JACOBIAN_PREFIX):
                train = [training_phase_stats(os.path.join(root, dataset, variant, f"seed{seed}"))
                         for seed in by_seed]
                solver_rows.append([dataset, variant, len(runs), _mean_std([r["mask_AP"] for r in runs]),
                                    _mean_std([r["oracle_mask_AP"] for r in runs]),
                                    _mean([r["solver_steps_per_image"] for r in runs], 1),
                                    _mean([r.get("solver_steps_per_roi") for r in runs], 2),
                                    *(_mean([t[k] for t in train], d) for k, d in (
                                        ("train_forward_steps", 1), ("train_backward_steps", 1),
                                        ("train_seconds_per_iteration", 2), ("loss_jacobian", 4)))])
    print(f"{args.max_iter} iterations per run, seeds {args.seeds}")
    print(tabulate(rows, headers=["dataset", "mask head", "seeds", "box AP", "mask AP", "mask AP75",
                                  "mask AP on GT boxes", "mask-head params", "/ 4-conv (head / features)",
                                  "s / image"], tablefmt="github"))
    if solver_rows:
        print("\nIFR solves (test: forward steps; training: means over the implicit phase)")
        print(tabulate(solver_rows, headers=["dataset", "mask head", "seeds", "mask AP", "mask AP on GT boxes",
                                             "test steps / image", "test steps / RoI", "train forward steps",
                                             "train backward steps", "train s / iter", "loss_jacobian"],
                       tablefmt="github"))
    print("\nPer seed")
    print(tabulate(per_seed, headers=["dataset", "mask head", "seed", "box AP", "mask AP", "mask AP75",
                                      "mask AP on GT boxes"], tablefmt="github"))


if __name__ == "__main__":
    main()
