"""Resuming under the command line's settings. A checkpoint restores the optimizer's state (momentum
buffers, Adam moments) and the schedule's position, but ``load_state_dict`` also brings back the
hyperparameters of the run that wrote it (base LR, weight decay, steps, gamma, warm-up, ...), which
would silently override what the resumed command asks for. ``TrainingSettings`` records the
hyperparameters the current config built; ``apply`` puts them back after the checkpoint is loaded,
so the schedule continues from the new values at the resumed iteration."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch.optim.lr_scheduler import LRScheduler

from ifr.config import ConfigError

# The schedulers' hyperparameters (their other state entries are the position in the schedule).
SCHEDULE_SETTINGS = ("base_lrs", "milestones", "gamma", "warmup_factor", "warmup_iters", "warmup_method", "max_iter")
# Optimizer param-group entries that are not hyperparameters: the parameters, the LR the schedule
# sets at each iteration, and the schedule's copy of the base LR (compared as ``base_lrs``).
_NOT_SETTINGS = ("params", "lr", "initial_lr")
# Setting -> the config key(s) that choose it, for the log and the errors.
CONFIG_KEYS = {
    "base_lrs": "SOLVER.OPTIMIZER.BASE_LR (x BIAS_LR_FACTOR for biases)",
    "weight_decay": "SOLVER.OPTIMIZER.WEIGHT_DECAY / WEIGHT_DECAY_NORM",
    "momentum": "SOLVER.OPTIMIZER.MOMENTUM",
    "betas": "SOLVER.OPTIMIZER.BETAS",
    "eps": "SOLVER.OPTIMIZER.EPS",
    "amsgrad": "SOLVER.OPTIMIZER.AMSGRAD",
    "milestones": "SOLVER.LR_SCHEDULER.STEPS",
    "gamma": "SOLVER.LR_SCHEDULER.GAMMA",
    "warmup_factor": "SOLVER.LR_SCHEDULER.WARMUP_FACTOR",
    "warmup_iters": "SOLVER.LR_SCHEDULER.WARMUP_ITERS",
    "warmup_method": "SOLVER.LR_SCHEDULER.WARMUP_METHOD",
    "max_iter": "SOLVER.LR_SCHEDULER.MAX_ITER",
}


def check_state_fits(obj, state: dict, checkpoint: str) -> None:
    """A ConfigError when ``state`` (from ``checkpoint``) is another kind of optimizer's or LR schedule's
    than ``obj``'s (other settings altogether): its state cannot continue under ``obj``."""
    if isinstance(obj, torch.optim.Optimizer) and state.get("param_groups") and obj.param_groups:
        theirs, mine, key = set(state["param_groups"][0]), set(obj.param_groups[0]), "SOLVER.OPTIMIZER.NAME"
    elif isinstance(obj, LRScheduler):
        theirs, mine = set(state) & set(SCHEDULE_SETTINGS), set(vars(obj)) & set(SCHEDULE_SETTINGS)
        key = "SOLVER.LR_SCHEDULER.NAME"
    else:
        return
    if theirs - {"initial_lr"} != mine - {"initial_lr"}:
        raise ConfigError(f"--resume: {checkpoint} was written with another {key} than the config's, and its state "
                          f"cannot continue under this one: keep the run's {key}, or start a new run from its weights "
                          f"with MODEL.WEIGHTS {checkpoint} in another OUTPUT_DIR")


def _shown(values: list):
    """One value when every parameter group has it, else the distinct values."""
    distinct = []
    for v in values:
        if v not in distinct:
            distinct.append(v)
    return distinct[0] if len(distinct) == 1 else distinct


@dataclass
class TrainingSettings:
    """The hyperparameters of an optimizer and its LR scheduler: one dict per param group
    (without its parameters and current LR), and the scheduler's ``SCHEDULE_SETTINGS``."""

    groups: list[dict]
    schedule: dict

    @classmethod
    def of(cls, optimizer: torch.optim.Optimizer, scheduler) -> "TrainingSettings":
        groups = [{k: copy.deepcopy(v) for k, v in g.items() if k not in _NOT_SETTINGS} for g in optimizer.param_groups]
        schedule = {k: copy.deepcopy(v) for k, v in vars(scheduler).items() if k in SCHEDULE_SETTINGS}
        return cls(groups, schedule)

    def by_setting(self) -> dict:
        """Setting name -> value (one value, or the distinct values over the param groups)."""
        names = sorted({k for g in self.groups for k in g})
        return {**{k: _shown([g.get(k) for g in self.groups]) for k in names},
                **{k: _shown(v) if k == "base_lrs" else v for k, v in self.schedule.items()}}

    def changes_from(self, old: "TrainingSettings") -> list[str]:
        """``KEY old -> new`` for every setting that differs from ``old``'s."""
        mine, theirs = self.by_setting(), old.by_setting()
        return [f"{CONFIG_KEYS.get(k, 'optimizer ' + k)} {theirs[k]!r} -> {mine[k]!r}"
                for k in mine if mine[k] != theirs[k]]

    def base_lr_ratio(self, other: "TrainingSettings") -> float:
        """``other``'s base LR over this one's (the ratio of their SOLVER.OPTIMIZER.BASE_LR)."""
        mine, theirs = self.schedule["base_lrs"][0], other.schedule["base_lrs"][0]
        return theirs / mine if mine else 1.0

    def apply(self, optimizer: torch.optim.Optimizer, scheduler, checkpoint: str, iteration: int) -> "TrainingSettings":
        """Replaces the hyperparameters a checkpoint loaded into ``optimizer`` / ``scheduler`` by these
        ones, keeping the optimizer's state; puts the schedule at ``iteration`` (the one training
        resumes at; also for a checkpoint without scheduler state) and sets each group's LR to the
        schedule's value there. Returns the checkpoint's settings (``check_state_fits``
        made sure they are the same optimizer's and schedule's)."""
        loaded = TrainingSettings.of(optimizer, scheduler)
        for group, settings in zip(optimizer.param_groups, self.groups):
            group.update(copy.deepcopy(settings))
        for name, value in self.schedule.items():
            setattr(scheduler, name, copy.deepcopy(value))
        scheduler.last_epoch = iteration
        for group, base_lr in zip(optimizer.param_groups, scheduler.base_lrs):
            group["initial_lr"] = base_lr
        lrs = scheduler.get_lr()  # the closed form at the resumed position
        for group, lr in zip(optimizer.param_groups, lrs):
            group["lr"] = lr
        scheduler._last_lr = list(lrs)
        return loaded
