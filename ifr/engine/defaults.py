"""What every run does: command-line parsing, output folder + logging + config dump, device and
schedule set-up, and the DefaultTrainer that assembles model, data, optimizer and hooks."""
from __future__ import annotations

import argparse
import logging
import math
import os
import random
import sys
from typing import Callable

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

import ifr
from ifr.config import ConfigError
from ifr.config.support import check_supported
from ifr.data import build_test_loader, build_train_loader, check_datasets, get_dataset_dicts
from ifr.data.build import evaluated_records
from ifr.errors import TrainingDivergedError, UserError
from ifr.evaluation import COCOEvaluator, inference_on_dataset, print_csv_format, verify_results
from ifr.evaluation.expected_results import check_expected_entries
from ifr.modeling.oracle import GroundTruthBoxesMaskPredictor
from ifr.modeling.tta import build_tta_model
from ifr.solver import build_gradient_clipper, build_lr_scheduler, build_optimizer
from ifr.solver.resume import TrainingSettings
from ifr.utils import comm

from .checkpoint import Checkpointer, training_checkpoints
from .divergence import divergence_advice
from .events import CommonMetricPrinter, JSONWriter, TensorboardWriter
from .launch import check_device_name
from .rendezvous import DEFAULT_JOIN_TIMEOUT_S
from .hooks import EquilibriumStatsHook, EvalHook, LRSchedulerHook, PeriodicCheckpointer, PeriodicWriter
from .random_state import RandomStates
from .train_loop import SimpleTrainer, model_device

logger = logging.getLogger("ifr")


def default_argument_parser(description: str, test: bool = False) -> argparse.ArgumentParser:
    """cvpods' command line: launcher flags, then ``KEY VALUE`` config overrides."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Config overrides follow the flags, e.g.: SOLVER.OPTIMIZER.BASE_LR 0.01 "
                                            "MODEL.DEVICE cpu")
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUTPUT_DIR's last checkpoint (or its newest loadable one) if present")
    if not test:
        parser.add_argument("--overwrite", action="store_true",
                            help="start from iteration 0 although OUTPUT_DIR holds a run's checkpoints")
    parser.add_argument("--eval-only", action="store_true", help="only evaluate MODEL.WEIGHTS")
    parser.add_argument("--num-gpus", type=int, default=1, help="processes per machine")
    parser.add_argument("--num-machines", type=int, default=1)
    parser.add_argument("--machine-rank", type=int, default=0)
    parser.add_argument("--dist-url", default="auto", help="init URL of the process group")
    parser.add_argument("--join-timeout", type=float, default=DEFAULT_JOIN_TIMEOUT_S, metavar="SECONDS",
                        help="how long the processes of several machines wait for each other at the start")
    parser.add_argument("--slurm", action="store_true",
                        help="one process per srun task: ranks and machine 0's address from SLURM's environment")
    if test:
        parser.add_argument("--start-iter", type=int, default=None, help="evaluate checkpoints from this iteration")
        parser.add_argument("--end-iter", type=int, default=None, help="... up to this iteration")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser


def check_arguments(args) -> None:
    """Flag combinations of pods_train / pods_test that contradict each other, refused in one line
    before anything runs."""
    weights = "MODEL.WEIGHTS" in args.opts[::2]
    overwrite = getattr(args, "overwrite", False)
    start, end = getattr(args, "start_iter", None), getattr(args, "end_iter", None)
    evaluates = args.eval_only or not hasattr(args, "overwrite")  # pods_test has no --overwrite
    contradictions = [
        (args.resume and overwrite, "--resume continues OUTPUT_DIR's run and --overwrite starts it over: pass one"),
        (args.eval_only and overwrite, "--overwrite starts a training over and --eval-only trains nothing: drop "
                                       "--overwrite"),
        (evaluates and args.resume and weights, "--resume evaluates OUTPUT_DIR's newest checkpoint and MODEL.WEIGHTS "
                                                "names another model: pass one of them"),
        ((start is not None or end is not None) and weights, "--start-iter/--end-iter select OUTPUT_DIR's "
                                                             "checkpoints and MODEL.WEIGHTS names one file: pass one "
                                                             "of them"),
        ((start is not None or end is not None) and args.resume, "--resume evaluates the newest checkpoint only and "
                                                                 "--start-iter/--end-iter select a range: drop "
                                                                 "--resume"),
        (start is not None and end is not None and start > end, f"--start-iter {start} is after --end-iter {end}: "
                                                                "no checkpoint lies between"),
        (any(i is not None and i < 0 for i in (start, end)), "--start-iter and --end-iter are iterations (>= 0)"),
    ]
    for contradicts, message in contradictions:
        if contradicts:
            raise UserError(message)


_FORMAT = "[%(asctime)s %(name)s]: %(message)s"


def setup_logger(output_dir: str | None, rank: int = 0) -> logging.Logger:
    """Logs of the ``ifr`` package to stdout and OUTPUT_DIR/log.txt from rank 0; other ranks print
    warnings and errors only."""
    root = logging.getLogger("ifr")
    root.setLevel(logging.INFO)
    root.propagate = False
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter(_FORMAT, datefmt="%m/%d %H:%M:%S")
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(formatter)
    if rank > 0:  # only rank 0 logs; the others say only what goes wrong
        console.setLevel(logging.WARNING)
    root.addHandler(console)
    if output_dir and rank == 0:
        try:
            os.makedirs(output_dir, exist_ok=True)
            file_handler = logging.FileHandler(os.path.join(output_dir, "log.txt"))
        except OSError as e:
            raise UserError(f"cannot write to OUTPUT_DIR {output_dir} ({e.strerror or e}): make it writable, or set "
                            "OUTPUT_DIR to a folder you can write (e.g. OUTPUT_DIR /tmp/run1)") from None
        file_handler.setFormatter(formatter)
        root.addHandler(file_handler)
    # First line of every tool's log: which copy of the package runs (several clones, several environments).
    root.info("ifr %s from %s", ifr.__version__, os.path.dirname(os.path.realpath(ifr.__file__)))
    return root


def resolve_device(cfg) -> torch.device:
    """MODEL.DEVICE, falling back to the CPU (said once in the log) when CUDA is unavailable."""
    device = cfg.MODEL.DEVICE
    check_device_name(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("MODEL.DEVICE is %r but no GPU is available: running on the CPU", device)
        cfg.MODEL.DEVICE = "cpu"
    elif device == "cpu":
        logger.info("running on the CPU (MODEL.DEVICE cpu)")
    return torch.device(cfg.MODEL.DEVICE)


def scale_to_world_size(cfg, world_size: int) -> None:
    """cvpods' schedule adjustment: configs are written for IMS_PER_BATCH / IMS_PER_DEVICE processes;
    with ``world_size`` processes the batch becomes IMS_PER_DEVICE * world_size and the iteration
    counts (MAX_ITER, STEPS, CHECKPOINT_PERIOD, EVAL_PERIOD) and BASE_LR are scaled to match, so one
    process reproduces an 8-GPU schedule with 8x the iterations at 1/8 the LR. WARMUP_ITERS and
    PRETRAINED_STEPS are not scaled (as in cvpods)."""
    solver = cfg.SOLVER
    reference = solver.IMS_PER_BATCH // solver.IMS_PER_DEVICE
    if reference < 1 or solver.IMS_PER_BATCH % solver.IMS_PER_DEVICE:
        raise ConfigError(f"SOLVER.IMS_PER_BATCH ({solver.IMS_PER_BATCH}) must be a multiple of SOLVER.IMS_PER_DEVICE "
                         f"({solver.IMS_PER_DEVICE})")
    if world_size == reference:
        return
    ratio = world_size / reference
    sched = solver.LR_SCHEDULER
    solver.IMS_PER_BATCH = solver.IMS_PER_DEVICE * world_size
    if int(sched.MAX_ITER / ratio) < 1 <= sched.MAX_ITER:
        raise ConfigError(f"SOLVER.LR_SCHEDULER.MAX_ITER {sched.MAX_ITER} for {reference} processes leaves no iteration "
                          f"for {world_size}: raise MAX_ITER to at least {math.ceil(ratio)}, or keep IMS_PER_BATCH "
                          f"{solver.IMS_PER_DEVICE * world_size} by setting SOLVER.IMS_PER_BATCH")
    sched.MAX_ITER = int(sched.MAX_ITER / ratio)
    sched.STEPS = tuple(int(s / ratio) for s in sched.STEPS)
    solver.CHECKPOINT_PERIOD = int(solver.CHECKPOINT_PERIOD / ratio)
    cfg.TEST.EVAL_PERIOD = int(cfg.TEST.EVAL_PERIOD / ratio)
    solver.OPTIMIZER.BASE_LR = solver.OPTIMIZER.BASE_LR * ratio
    logger.info("scaled the schedule from %d to %d processes: IMS_PER_BATCH %d, MAX_ITER %d, STEPS %s, BASE_LR %g",
                reference, world_size, solver.IMS_PER_BATCH, sched.MAX_ITER, sched.STEPS, solver.OPTIMIZER.BASE_LR)


def seed_all(seed: int) -> None:
    """Seeds python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# What an evaluation (pods_test, --eval-only) records of its config, beside the training's config.json
# (which it never rewrites: that is the record of what was trained).
EVALUATION_CONFIG_RECORD = "config_evaluation.json"


def default_setup(cfg, args, world_size: int = 1, rank: int = 0, record: str = "config.json") -> None:
    """Output folder, logging, schedule scaling, seed, device; logs the final config and dumps it to
    ``OUTPUT_DIR/record`` (``EVALUATION_CONFIG_RECORD`` for commands that only evaluate)."""
    check_supported(cfg)
    check_expected_entries(cfg.TEST.EXPECTED_RESULTS, evaluated_tasks(cfg), tuple(cfg.DATASETS.TEST))
    if not isinstance(cfg.TEST.MAX_IMAGES, int) or isinstance(cfg.TEST.MAX_IMAGES, bool) or cfg.TEST.MAX_IMAGES < 0:
        raise ConfigError(f"TEST.MAX_IMAGES is {cfg.TEST.MAX_IMAGES!r}: give the number of test images to evaluate "
                          "(e.g. TEST.MAX_IMAGES 5), or 0 for all of them")
    setup_logger(cfg.OUTPUT_DIR, rank)
    logger.info("command line: %s", " ".join(sys.argv))
    logger.info("torch %s, torchvision %s, CUDA available: %s", torch.__version__,
                __import__("torchvision").__version__, torch.cuda.is_available())
    scale_to_world_size(cfg, world_size)
    # One SEED for the run (the data order is drawn from it on every process); each process seeds
    # its own generators with SEED + rank.
    seed = cfg.SEED if cfg.SEED >= 0 else int.from_bytes(os.urandom(2), "big")
    cfg.SEED = comm.all_gather(seed)[0]
    seed_all(cfg.SEED + rank)
    resolve_device(cfg)
    if cfg.TEST.AUG.ENABLED:
        warn_about_tta_upscaling(cfg)
    logger.info("config differences from %s:\n%s", type(cfg).__mro__[1].__name__, cfg.diff(cfg.base_defaults()))
    if rank == 0:
        cfg.dump(os.path.join(cfg.OUTPUT_DIR, record))
    if not args.eval_only:
        torch.backends.cudnn.benchmark = cfg.CUDNN_BENCHMARK


# Test-time augmentation scales beyond this many times the data's largest short edge add compute
# (quadratic in the scale) and no detail: warned about before evaluating.
TTA_UPSCALE_WARNING = 4.0


def warn_about_tta_upscaling(cfg) -> None:
    """With TEST.AUG enabled, a warning for each DATASETS.TEST set whose largest image is upscaled more
    than ``TTA_UPSCALE_WARNING`` times by the largest TEST.AUG.MIN_SIZES."""
    largest = max(cfg.TEST.AUG.MIN_SIZES)
    for name in cfg.DATASETS.TEST:
        short_edges = [min(d["height"], d["width"]) for d in get_dataset_dicts(name) if d.get("height") and d.get("width")]
        if short_edges and largest > TTA_UPSCALE_WARNING * max(short_edges):
            logger.warning("TEST.AUG.MIN_SIZES up to %d px upscale every image of %s (short edges at most %d px) by "
                           "%.0fx: each such view costs about %.0fx the compute of the images' own size and "
                           "adds no detail; choose sizes near the data's, e.g. TEST.AUG.MIN_SIZES \"(%d, %d)\"",
                           largest, name, max(short_edges), largest / max(short_edges), (largest / max(short_edges)) ** 2,
                           max(short_edges) // 2, max(short_edges))


def evaluated_tasks(cfg) -> tuple[str, ...]:
    return ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)


def build_evaluator(cfg, dataset_name: str, output_dir: str | None = None) -> COCOEvaluator:
    return COCOEvaluator(dataset_name, output_dir or os.path.join(cfg.OUTPUT_DIR, "inference"), evaluated_tasks(cfg),
                         cfg.MODEL.ROI_HEADS.NUM_CLASSES)


def evaluate(cfg, model: torch.nn.Module, show_progress: bool = True) -> dict:
    """Evaluates on every DATASETS.TEST entry (with TEST.AUG.ENABLED, with test-time augmentation);
    prints the COCO tables and copypaste lines. Returns ``{task: {metric: value}}`` for one dataset,
    ``{dataset: ...}`` for several."""
    tta = build_tta_model(cfg, model)
    oracle = cfg.TEST.ORACLE_BOXES
    if oracle and (tta is not None or not cfg.MODEL.MASK_ON):
        raise ConfigError("TEST.ORACLE_BOXES evaluates the mask head on the ground-truth boxes: it needs "
                          "MODEL.MASK_ON True and no TEST.AUG")
    if tta is not None:
        logger.info("test-time augmentation: short edges %s (long edge <= %d)%s", list(cfg.TEST.AUG.MIN_SIZES),
                    cfg.TEST.AUG.MAX_SIZE, ", each also flipped" if cfg.TEST.AUG.FLIP else "")
    evaluated = GroundTruthBoxesMaskPredictor(model) if oracle else (tta or model)
    results = {}
    for name in cfg.DATASETS.TEST:
        loader = build_test_loader(cfg, name, comm.get_rank(), comm.get_world_size(), tta=tta is not None,
                                   with_boxes=oracle)
        if oracle:
            logger.info("TEST.ORACLE_BOXES: masks on the ground-truth boxes of %s (box AP is 100 by construction)",
                        name)
        output_dir = os.path.join(cfg.OUTPUT_DIR, "inference_oracle_boxes" if oracle else "inference")
        scores = inference_on_dataset(evaluated, loader, build_evaluator(cfg, name, output_dir), show_progress)
        logger.info("Evaluation results for %s in csv format:", name)
        print_csv_format(scores)
        results[name] = scores
    return results[cfg.DATASETS.TEST[0]] if len(results) == 1 else results


def check_expected_results(cfg, results: dict) -> None:
    """TEST.EXPECTED_RESULTS against the results ``evaluate`` returned (on the main process, which
    holds them): a mismatch raises ``ResultsMismatch`` (the command then fails)."""
    if not comm.is_main_process() or not cfg.DATASETS.TEST:
        return
    if cfg.TEST.MAX_IMAGES > 0 and cfg.TEST.EXPECTED_RESULTS:
        logger.warning("TEST.EXPECTED_RESULTS not checked: TEST.MAX_IMAGES %d evaluated a subset of the images",
                       cfg.TEST.MAX_IMAGES)
        return
    per_dataset = results if len(cfg.DATASETS.TEST) > 1 else {cfg.DATASETS.TEST[0]: results}
    for name, scores in per_dataset.items():
        verify_results(cfg.TEST.EXPECTED_RESULTS, scores, name)


class DefaultTrainer(SimpleTrainer):
    """Builds model (``build_model(cfg)``, from the experiment's net.py), data, optimizer, schedule,
    checkpointer and hooks from ``cfg``; ``resume_or_load`` then ``train``."""

    def __init__(self, cfg, build_model: Callable, show_progress: bool = True):
        self.cfg = cfg
        if cfg.SOLVER.LR_SCHEDULER.MAX_ITER < 1:
            raise ConfigError(f"SOLVER.LR_SCHEDULER.MAX_ITER is {cfg.SOLVER.LR_SCHEDULER.MAX_ITER}: training needs at "
                              "least one iteration (to only evaluate, use pods_test or --eval-only)")
        # not only after hours of training
        check_datasets(cfg.DATASETS.TEST, cfg.MODEL.ROI_HEADS.NUM_CLASSES, evaluated_tasks(cfg))
        model = build_model(cfg).to(cfg.MODEL.DEVICE)
        logger.info("model:\n%s", model)
        optimizer = build_optimizer(cfg, model)
        rank, world_size = comm.get_rank(), comm.get_world_size()
        trained = model
        if comm.is_distributed():  # also a 1-process group (torchrun --nproc_per_node 1): the DDP path
            device_ids = [torch.cuda.current_device()] if model_device(model).type == "cuda" else None
            trained = DistributedDataParallel(model, device_ids=device_ids)
        self.loader_arguments = dict(cfg=cfg, seed=cfg.SEED, rank=rank, world_size=world_size)
        super().__init__(trained, build_train_loader(**self.loader_arguments), optimizer, build_gradient_clipper(cfg),
                         mixed_precision=cfg.TRAINER.FP16.ENABLED, batch_subdivisions=cfg.SOLVER.BATCH_SUBDIVISIONS)
        self.scheduler = build_lr_scheduler(cfg, optimizer)
        checkpointables = dict(optimizer=optimizer, scheduler=self.scheduler, random_states=RandomStates(model_device(model)))
        if self.grad_scaler is not None:
            checkpointables["grad_scaler"] = self.grad_scaler
        self.checkpointer = Checkpointer(model, cfg.OUTPUT_DIR, save_to_disk=comm.is_main_process(), **checkpointables)
        self.start_iter = 0
        self.trained_base_lr: dict[str, float] = {}  # the checkpoint resumed from -> the BASE_LR it was trained at
        max_iter = cfg.SOLVER.LR_SCHEDULER.MAX_ITER
        records = [JSONWriter(os.path.join(cfg.OUTPUT_DIR, "metrics.json"), cfg.TRAINER.WINDOW_SIZE),
                   TensorboardWriter(cfg.OUTPUT_DIR)] if comm.is_main_process() else []
        writers = [CommonMetricPrinter(max_iter, cfg.TRAINER.WINDOW_SIZE), *records] if records else []

        def evaluate_model() -> dict:
            if not cfg.DATASETS.TEST:
                return {}
            results = evaluate(cfg, model, show_progress and comm.is_main_process())
            # how many images the APs are of (TEST.MAX_IMAGES may make it a subset), in metrics.json
            first = get_dataset_dicts(cfg.DATASETS.TEST[0])
            self.storage.put_scalar("eval/images", len(evaluated_records(first, cfg.TEST.MAX_IMAGES)))
            return results

        self.eval_hook = EvalHook(cfg.TEST.EVAL_PERIOD, evaluate_model, writers=records)
        self.register_hooks([
            LRSchedulerHook(optimizer, self.scheduler),
            EquilibriumStatsHook(model, period=cfg.TRAINER.WINDOW_SIZE),
            PeriodicCheckpointer(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD, max_iter),
            PeriodicWriter(writers, period=cfg.TRAINER.WINDOW_SIZE),  # the iteration's log line, then evaluation
            self.eval_hook,
        ])

    def resume_or_load(self, resume: bool, overwrite: bool = False) -> None:
        """``resume``: continue from the newest loadable checkpoint of OUTPUT_DIR (``Checkpointer.resume``),
        with the optimizer and LR-schedule settings of the config (those that differ from the
        checkpoint's are logged, and the schedule continues from them at the resumed iteration).
        Otherwise start at iteration 0 from MODEL.WEIGHTS, which over a folder that already holds a
        run's checkpoints (they would be overwritten one by one) needs ``overwrite``."""
        requested = TrainingSettings.of(self.optimizer, self.scheduler)
        resumed = self.checkpointer.resume() if resume else None
        if resumed is not None:
            # Only a resumed run continues the iteration count; MODEL.WEIGHTS is an initialisation.
            self.start_iter = resumed[1].get("iteration", -1) + 1
            loaded = requested.apply(self.optimizer, self.scheduler, resumed[0], self.start_iter)
            self.trained_base_lr[resumed[0]] = self.cfg.SOLVER.OPTIMIZER.BASE_LR * requested.base_lr_ratio(loaded)
            changes = requested.changes_from(loaded)
            if changes:
                logger.info("--resume: the config changes the checkpoint's %s; applied from iteration %d on (LR %g "
                            "there)", ", ".join(changes), self.start_iter,
                            max(g["lr"] for g in self.optimizer.param_groups))
            planned, max_iter = resumed[1].get("max_iter"), self.cfg.SOLVER.LR_SCHEDULER.MAX_ITER
            if planned is not None and planned != max_iter:  # (checkpoints record the MAX_ITER they were written under)
                logger.info("--resume: SOLVER.LR_SCHEDULER.MAX_ITER %d -> %d: the run now ends after iteration %d "
                            "(the checkpoint's run was to end after %d)", planned, max_iter, max_iter - 1, planned - 1)
            if self.start_iter > 0:  # continue the data stream where the checkpointed run was
                self.data_loader = build_train_loader(**self.loader_arguments, start_batch=self.start_iter)
            return
        existing = training_checkpoints(self.cfg.OUTPUT_DIR)
        if resume:
            logger.info("--resume: no checkpoint in %s, starting from MODEL.WEIGHTS", self.cfg.OUTPUT_DIR)
        elif existing and not overwrite:
            raise UserError(f"{self.cfg.OUTPUT_DIR} already holds the checkpoints of a run "
                            f"({', '.join(os.path.basename(p) for p in existing[-3:])}): continue it with --resume, "
                            "start over with --overwrite (its checkpoints are replaced as the new run saves), or "
                            "set another OUTPUT_DIR")
        self.start_iter = 0
        if self.cfg.MODEL.WEIGHTS:
            self.checkpointer.load(self.cfg.MODEL.WEIGHTS)

    def train(self) -> None:
        try:
            super().train(self.start_iter, self.cfg.SOLVER.LR_SCHEDULER.MAX_ITER)
        except TrainingDivergedError as e:
            if not comm.is_main_process():
                raise
            advice = divergence_advice(self.checkpointer, self.storage.history.get("total_loss", []),
                                       self.cfg.TRAINER.WINDOW_SIZE, self.cfg.SOLVER.OPTIMIZER.BASE_LR,
                                       self.trained_base_lr)
            raise TrainingDivergedError(f"{e}. {advice}") from None
        if self.eval_hook.last_results:  # the final model's evaluation
            check_expected_results(self.cfg, self.eval_hook.last_results)


def check_resumed_together(start_iter: int, output_dir: str) -> None:
    """Every process of a job continues at the same iteration. With ``--resume`` each process loads
    the checkpoint from its own view of OUTPUT_DIR: a machine that does not share the folder would
    start over while the others continue, and the job would hang in the first collective they no
    longer share."""
    starts = comm.all_gather(start_iter)
    others = sorted({start for start in starts if start != starts[0]})
    if others:
        ranks = [rank for rank, start in enumerate(starts) if start != starts[0]]
        raise UserError(f"--resume: process 0 continues at iteration {starts[0]} and process "
                        f"{', '.join(map(str, ranks))} at {', '.join(map(str, others))}: the machines do not see the "
                        f"same checkpoints in {output_dir}; put OUTPUT_DIR on a filesystem every machine shares (or "
                        "copy machine 0's checkpoints there) and run the command again")
