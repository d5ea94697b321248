"""The paper's refinement ablation on the built-in data: the 4-conv mask head, the weight-sharing block
x4 and IFR, the same small model, schedule and data, several seeds.

    python benchmarks/ablation.py [--datasets hard shapes] [--seeds 0 1 2] [--max-iter 800]
                                  [--heads conv weight_sharing ifr] [--output DIR]

Each run is the quickstart's small model (``ifr.presets.small_model_overrides``) with the given mask
head; the 4-conv head is as wide as the refinement block (the FPN's 128 channels, as 256 in the paper).
It reports box AP, mask AP, mask AP75, mask AP on the ground-truth boxes (TEST.ORACLE_BOXES), the
mask head's parameters and their ratio to the 4-conv head's, inference time per image and solver
steps per image; then the mean and standard deviation over seeds. Finished runs are not re-run
(each leaves ``results.json`` in ``DIR/<dataset>/<head>/seed<k>``; default DIR:
``$IFR_OUTPUT_ROOT/ablation``, else ``output/ablation``).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from tabulate import tabulate

from ifr.data import get_dataset_dicts
from ifr.engine import DefaultTrainer, default_setup, evaluate
from ifr.modeling import build_generalized_rcnn
from ifr.paths import EXPERIMENTS, output_root
from ifr.presets import small_model_overrides
from ifr.tools.experiment import load_experiment

DATASETS = {"hard": ("synthetic_hard_train", "synthetic_hard_val", 5),
            "shapes": ("synthetic_shapes_train", "synthetic_shapes_val", 3)}
HEADS = ("conv", "weight_sharing", "ifr")


def run_config(dataset: str, head: str, seed: int, max_iter: int, output_dir: str):
    config, _ = load_experiment(EXPERIMENTS["ifr"])
    config.merge(small_model_overrides(max_iter))
    train, val, classes = DATASETS[dataset]
    config.merge(dict(DATASETS=dict(TRAIN=(train,), TEST=(val,)), SEED=seed, OUTPUT_DIR=output_dir,
                      MODEL=dict(ROI_HEADS=dict(NUM_CLASSES=classes), ROI_MASK_HEAD=dict(CONV_DIM=128))))
    return config, lambda cfg: build_generalized_rcnn(cfg, mask_head=head)


class SolverSteps:
    """Counts the forward solver steps of a refinement over the calls it makes."""

    def __init__(self, model):
        head = model.roi_heads.mask_head
        self.refinement = getattr(head, "refinement", None)
        self.steps = 0
        if self.refinement is not None:
            self.refinement.register_forward_hook(self._count)

    def _count(self, module, inputs, output) -> None:
        if module.last_stats is not None:
            self.steps += module.last_stats.iterations


def one_run(dataset: str, head: str, seed: int, max_iter: int, root: str) -> dict:
    out = os.path.join(root, dataset, head, f"seed{seed}")
    done = os.path.join(out, "results.json")
    if os.path.isfile(done):
        return json.load(open(done))
    config, build_model = run_config(dataset, head, seed, max_iter, out)
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
    config.TEST.ORACLE_BOXES = True
    oracle = evaluate(config, model, show_progress=False)
    mask_head = model.roi_heads.mask_head
    head_parameters = sum(p.numel() for p in mask_head.parameters())
    upsampling = sum(p.numel() for m in (mask_head.deconv, mask_head.predictor) for p in m.parameters())
    result = {"box_AP": scores["bbox"]["AP"], "mask_AP": scores["segm"]["AP"], "mask_AP75": scores["segm"]["AP75"],
              "oracle_mask_AP": oracle["segm"]["AP"], "mask_head_parameters": head_parameters,
              "feature_layer_parameters": head_parameters - upsampling,
              "seconds_per_image": seconds / max(images, 1), "solver_steps_per_image": steps.steps / max(images, 1)}
    with open(done, "w") as f:
        json.dump(result, f, indent=1)
    return result


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["hard", "shapes"], choices=sorted(DATASETS))
    parser.add_argument("--heads", nargs="+", default=list(HEADS), choices=HEADS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--shapes-seeds", nargs="+", type=int, default=None,
                        help="seeds on the shapes dataset (default: --seeds)")
    parser.add_argument("--max-iter", type=int, default=800)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    root = args.output or os.path.join(output_root(), "ablation")
    rows, per_seed = [], []
    for dataset in args.datasets:
        seeds = args.shapes_seeds if dataset == "shapes" and args.shapes_seeds else args.seeds
        results = {head: [one_run(dataset, head, seed, args.max_iter, root) for seed in seeds] for head in args.heads}
        conv = results["conv"][0] if "conv" in results else None
        for head, runs in results.items():
            for seed, r in zip(seeds, runs):
                per_seed.append([dataset, head, seed, *(f"{r[k]:.1f}" for k in ("box_AP", "mask_AP", "mask_AP75",
                                                                               "oracle_mask_AP"))])
            ratio = (f"{runs[0]['mask_head_parameters'] / conv['mask_head_parameters']:.2f} / "
                     f"{runs[0]['feature_layer_parameters'] / conv['feature_layer_parameters']:.2f}") if conv else "-"
            rows.append([dataset, head, len(runs), *(_mean_std([r[k] for r in runs]) for k in
                                                     ("box_AP", "mask_AP", "mask_AP75", "oracle_mask_AP")),
                         f"{runs[0]['mask_head_parameters']:,}", ratio,
                         f"{statistics.mean(r['seconds_per_image'] for r in runs):.3f}",
                         f"{statistics.mean(r['solver_steps_per_image'] for r in runs):.1f}"])
    print(f"{args.max_iter} iterations per run, seeds {args.seeds}")
    print(tabulate(rows, headers=["dataset", "mask head", "seeds", "box AP", "mask AP", "mask AP75",
                                  "mask AP on GT boxes", "mask-head params", "/ 4-conv (head / features)", "s / image",
                                  "solver steps / image"], tablefmt="github"))
    print(tabulate(per_seed, headers=["dataset", "mask head", "seed", "box AP", "mask AP", "mask AP75",
                                      "mask AP on GT boxes"], tablefmt="github"))


if __name__ == "__main__":
    main()
