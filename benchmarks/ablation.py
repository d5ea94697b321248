"""The paper's refinement ablation on the built-in data: the 4-conv mask head, the weight-sharing block
x4 and IFR, the same small model, schedule and data, several seeds.

    python benchmarks/ablation.py [--datasets hard shapes] [--seeds 0 1 2] [--max-iter 800]
                                  [--heads conv weight_sharing ifr] [--jacobian-weights 0 0.5 2]
                                  [--output DIR] [--finished-only]

Each run is the quickstart's small model (``ifr.presets.small_model_overrides``) with the given mask
head; the 4-conv head is as wide as the refinement block (the FPN's 128 channels, as 256 in the paper).
It reports box AP, mask AP, mask AP75, mask AP on the ground-truth boxes (TEST.ORACLE_BOXES), the
mask head's parameters and their ratio to the 4-conv head's, inference time per image and solver
steps per image and per RoI; then the mean and standard deviation over seeds. Each run leaves
``results.json`` in ``DIR/<dataset>/<head>/seed<k>`` (default DIR: ``$IFR_OUTPUT_ROOT/ablation``, else
``output/ablation``) with the settings it ran with (its whole config, the mask head, the CPU threads).
A finished run is reused only when those match the command's; otherwise (or when its results.json
cannot be read) it is run again from scratch, saying why. ``--finished-only`` prints the tables of the
matching finished runs without training the others, and says which runs it left out and why. The
tables are titled with the iterations, seeds and threads the runs recorded. A run's folder is claimed
while it trains (``ifr.utils.run_lock``), so commands into one DIR can run side by side on different runs;
one that reaches a run another command is at work on stops in one line naming it.

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
import sys
import time
from typing import Callable

import torch
from tabulate import tabulate

from ifr.data import get_dataset_dicts
from ifr.engine import DefaultTrainer, default_setup, evaluate
from ifr.engine.checkpoint import checkpoint_iteration, training_checkpoints
from ifr.paths import EXPERIMENTS, output_root
from ifr.presets import small_model_overrides
from ifr.tools.experiment import load_experiment, run_reporting_user_errors
from ifr.utils.atomic import json_writer, write_atomically
from ifr.utils.run_lock import LOCK_NAME, claim_run_folder

DATASETS = {"hard": ("synthetic_hard_train", "synthetic_hard_val", 5),
            "shapes": ("synthetic_shapes_train", "synthetic_shapes_val", 3)}
HEADS = ("conv", "weight_sharing", "ifr")
# Each head's model comes from its experiment folder's net.py (the 4-conv head: the Mask R-CNN baseline).
HEAD_FOLDERS = {"conv": EXPERIMENTS["baseline"], "weight_sharing": EXPERIMENTS["weight_sharing"],
                "ifr": EXPERIMENTS["ifr"]}
JACOBIAN_PREFIX = "ifr_jac"


def variant_name(head: str, jacobian_weight: float = 0.0) -> str:
    """The run's head name: ``ifr_jac<w>`` for a Jacobian-regularised IFR head, else ``head``."""
    return f"{JACOBIAN_PREFIX}{jacobian_weight:g}" if head == "ifr" and jacobian_weight > 0 else head


def _split_variant(variant: str) -> tuple[str, float]:
    """``ifr_jac<w>`` -> ("ifr", w); a head name -> (head, 0)."""
    return ("ifr", float(variant[len(JACOBIAN_PREFIX):])) if variant.startswith(JACOBIAN_PREFIX) else (variant, 0.0)


def _config_record(config) -> dict:
    """The config as JSON would hold it (tuples as lists), without the run's folder."""
    record = json.loads(json.dumps(config.to_dict(), default=repr))
    record.pop("OUTPUT_DIR", None)
    return record


def run_settings(config, variant: str) -> dict:
    """What a run's results depend on: its whole config, its mask head and the CPU threads."""
    return {"mask_head": _split_variant(variant)[0], "threads": torch.get_num_threads(),
            "config": _config_record(config)}


def setting_differences(recorded, wanted, prefix: str = "") -> list[str]:
    """``KEY recorded -> wanted`` for every (nested, dotted) setting that differs."""
    if isinstance(recorded, dict) and isinstance(wanted, dict):
        return [d for key in sorted(set(recorded) | set(wanted), key=str)
                for d in setting_differences(recorded.get(key), wanted.get(key), f"{prefix}{key}.")]
    return [] if recorded == wanted else [f"{prefix.rstrip('.').replace('config.', '', 1)} {recorded!r} -> {wanted!r}"]


def reusable_results(out: str, wanted: dict) -> tuple[dict | None, str]:
    """The finished run's results in ``out`` when its recorded settings are ``wanted``; else
    (None, why not)."""
    path = os.path.join(out, "results.json")
    if not os.path.isfile(path):
        return None, "not run yet"
    try:
        with open(path) as f:
            results = json.load(f)
        if not isinstance(results, dict):
            raise ValueError(f"holds a {type(results).__name__}, not the results")
    except (OSError, ValueError) as e:  # JSONDecodeError is a ValueError
        return None, f"its results.json cannot be read ({type(e).__name__}: {e})"
    if "settings" not in results:
        return None, "its results.json records no settings (written by an older version)"
    differences = setting_differences(results["settings"], wanted)
    if differences:
        shown = "; ".join(differences[:4]) + (f"; and {len(differences) - 4} more" if len(differences) > 4 else "")
        return None, f"it ran with other settings ({shown})"
    return results, "finished"


def _recorded_config(run: str) -> dict | None:
    """The config.json of the run in folder ``run`` without its OUTPUT_DIR; None when unreadable."""
    try:
        with open(os.path.join(run, "config.json")) as f:
            recorded = json.load(f)
    except (OSError, ValueError):
        return None
    recorded.pop("OUTPUT_DIR", None)
    return recorded


def _checkpoints_of_other_run(out: str, settings: dict) -> bool:
    """Whether ``out`` holds checkpoints of a run whose config.json is not ``settings``' config (a
    run with the same one is resumed: an interrupted run, or one whose results.json was lost)."""
    if not training_checkpoints(out):
        return False
    recorded = _recorded_config(out)
    return recorded is None or bool(setting_differences(recorded, settings["config"]))


def run_config(dataset: str, variant: str, seed: int, max_iter: int, output_dir: str):
    """The config and model builder of one run (``variant``: a head name or ``ifr_jac<w>``): the IFR
    folder's config for every head (one small model, schedule and data), the head's folder's net.py."""
    config, _ = load_experiment(EXPERIMENTS["ifr"])
    config.merge(small_model_overrides(max_iter))
    train, val, classes = DATASETS[dataset]
    head, jacobian_weight = _split_variant(variant)
    config.merge(dict(DATASETS=dict(TRAIN=(train,), TEST=(val,)), SEED=seed, OUTPUT_DIR=output_dir,
                      MODEL=dict(ROI_HEADS=dict(NUM_CLASSES=classes),
                                 ROI_MASK_HEAD=dict(CONV_DIM=128, JACOBIAN_WEIGHT=jacobian_weight))))
    _, build_model = load_experiment(HEAD_FOLDERS[head])
    return config, build_model


class SolverSteps:
    """Counts the forward solver steps of ``refinements`` (``EquilibriumRefinement`` modules; None
    entries, heads without one, are skipped) over the calls they make: per call (the batch's longest
    solve) and per sample (RoI)."""

    def __init__(self, refinements):
        self.steps = self.roi_steps = self.rois = 0
        self._hooks = [r.register_forward_hook(self._count) for r in refinements if r is not None]

    def remove(self) -> None:
        """Stops counting."""
        for hook in self._hooks:
            hook.remove()

    def _count(self, module, inputs, output) -> None:
        self.add(module.last_stats)

    def add(self, stats) -> None:
        """Counts one solve's statistics (``SolverStats``; None, an unrolled call, counts nothing)."""
        if stats is not None:
            self.steps += stats.iterations
            self.roi_steps += int(stats.sample_steps.sum())
            self.rois += stats.sample_steps.numel()


def share_unrolled_phase(config, plain_run: str) -> str | None:
    """Copies into an empty regularised run's folder the plain IFR run's last checkpoint from before
    PRETRAINED_STEPS (the two runs are the same until then); returns the copied path, or None."""
    if training_checkpoints(config.OUTPUT_DIR) or not _same_run_until_implicit_phase(config, plain_run):
        return None
    earlier = [p for p in training_checkpoints(plain_run)
               if checkpoint_iteration(p, float("inf")) <= config.MODEL.ROI_MASK_HEAD.PRETRAINED_STEPS]
    if not earlier:
        return None
    copied = os.path.join(config.OUTPUT_DIR, os.path.basename(earlier[-1]))
    write_atomically(copied, lambda path: shutil.copyfile(earlier[-1], path))
    return copied


def _same_run_until_implicit_phase(config, plain_run: str) -> bool:
    """Whether the plain IFR run's config.json is ``config`` but for JACOBIAN_WEIGHT (and OUTPUT_DIR)."""
    plain = _recorded_config(plain_run)
    if plain is None:
        return False
    return [d for d in setting_differences(plain, _config_record(config))
            if not d.startswith("MODEL.ROI_MASK_HEAD.JACOBIAN_WEIGHT ")] == []


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
    """The run's results: read when it finished with the same settings, else trained and evaluated
    (None with ``finished_only``, saying why it is left out)."""
    out = os.path.join(root, dataset, variant, f"seed{seed}")
    config, build_model = run_config(dataset, variant, seed, max_iter, out)
    settings = run_settings(config, variant)
    return reused_or_run(out, settings, finished_only, lambda why: _train_and_evaluate(
        dataset, variant, seed, root, out, config, build_model, settings, why))


def reused_or_run(out: str, settings: dict, finished_only: bool, run: Callable[[str], dict]) -> dict | None:
    """The results of the run in folder ``out``: read when it finished with ``settings``, else
    ``run(why it is run)`` with the folder claimed for this command (``ifr.utils.run_lock``: another
    command at work on the same run is refused in one line naming it); with ``finished_only``, None,
    saying why the run is left out."""
    results, why = reusable_results(out, settings)
    if results is not None:
        return results
    if finished_only:
        print(f"left out {out}: {why}")
        return None
    with claim_run_folder(out, "let it finish (its results are then reused), or give this command another --output"):
        results, why = reusable_results(out, settings)  # again: another command may have finished it meanwhile
        return results if results is not None else run(why)


def clear_run_folder(out: str) -> None:
    """Removes what an earlier run left in the claimed folder ``out``, its lock excepted."""
    for entry in os.scandir(out):
        if entry.name != LOCK_NAME:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.remove(entry.path)


def _train_and_evaluate(dataset: str, variant: str, seed: int, root: str, out: str, config, build_model,
                        settings: dict, why: str) -> dict:
    if why != "not run yet":
        print(f"running {out} again: {why}")
    if why.startswith("it ran with other settings") or _checkpoints_of_other_run(out, settings):
        print(f"{out}: its checkpoints are of a run with other settings; starting over")
        clear_run_folder(out)
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
    steps = SolverSteps([getattr(model.roi_heads.mask_head, "refinement", None)])
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
              "seconds_per_image": seconds / max(images, 1), **solves, "settings": settings}
    write_atomically(os.path.join(out, "results.json"), json_writer(result, indent=1))
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


def title(runs: list[dict]) -> str:
    """The tables' title from the reported runs' own records: iterations, seeds, CPU threads."""
    if not runs:
        return "no finished run matches these settings"
    settings = [r["settings"] for r in runs]
    iterations = sorted({s["config"]["SOLVER"]["LR_SCHEDULER"]["MAX_ITER"] for s in settings})
    seeds = sorted({s["config"]["SEED"] for s in settings})
    threads = sorted({s["threads"] for s in settings})
    return (f"{' / '.join(map(str, iterations))} iterations per run, seeds {seeds}, "
            f"{' / '.join(map(str, threads))} CPU thread{'s' if threads != [1] else ''}")


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
    rows, solver_rows, per_seed, reported = [], [], [], []
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
            reported.extend(runs)
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
    if not reported:  # e.g. --finished-only in a fresh clone: nothing to tabulate
        command = " ".join(a for a in sys.argv[1:] if a != "--finished-only")
        print(f"no finished run in {root} matches these settings: train and evaluate them with "
              f"`python benchmarks/ablation.py{' ' + command if command else ''}` (without --finished-only; each run "
              f"is a {args.max_iter}-iteration quickstart-sized training, minutes on a CPU), then run this again")
        return
    print(title(reported))
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
    run_reporting_user_errors(lambda _: main(), None)
