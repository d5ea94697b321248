"""Hooks around the training loop: LR schedule, checkpoints, evaluation, metric writers, DEQ stats."""
from __future__ import annotations

import logging

from torch import nn

from ifr.deq import EquilibriumRefinement
from ifr.deq.unconverged import UnconvergedSolves

logger = logging.getLogger(__name__)


class HookBase:
    """``trainer`` is set when the hook is registered."""

    trainer = None

    def before_train(self) -> None: ...

    def after_step(self) -> None: ...

    def after_train(self) -> None: ...


class LRSchedulerHook(HookBase):
    """Records the LR used by this iteration, then steps the scheduler."""

    def __init__(self, optimizer, scheduler):
        self.optimizer, self.scheduler = optimizer, scheduler

    def after_step(self) -> None:
        self.trainer.storage.put_scalar("lr", max(g["lr"] for g in self.optimizer.param_groups))
        self.scheduler.step()


class PeriodicCheckpointer(HookBase):
    """``model_{iter+1:07d}`` every ``period`` iterations and ``model_final`` at the end."""

    def __init__(self, checkpointer, period: int, max_iter: int):
        self.checkpointer, self.period, self.max_iter = checkpointer, period, max_iter

    def after_step(self) -> None:
        it = self.trainer.iter
        if it + 1 >= self.max_iter:
            self.checkpointer.save("model_final", iteration=it, max_iter=self.max_iter)
        elif self.period > 0 and (it + 1) % self.period == 0:
            self.checkpointer.save(f"model_{it + 1:07d}", iteration=it, max_iter=self.max_iter)


class EvalHook(HookBase):
    """Runs ``evaluate()`` every ``period`` iterations (0: none) and after the last iteration, after
    the writers have reported that iteration (so the log's last training line comes before the
    evaluation tables), stores the APs as metrics (``segm/AP``, ...) and hands them to ``writers``
    (metrics.json, TensorBoard: the iteration's record gains them). Register it after the
    ``PeriodicWriter``."""

    def __init__(self, period: int, evaluate, writers: list = ()):
        self.period, self.evaluate, self.writers = period, evaluate, list(writers)
        self.last_results: dict | None = None

    def _run(self) -> None:
        results = self.last_results = self.evaluate()
        storage = self.trainer.storage
        for task, scores in (results or {}).items():
            for name, value in scores.items():
                if "-" not in name:
                    storage.put_scalar(f"{task}/{name}", value)
        if results:
            for writer in self.writers:
                writer.write(storage)

    def before_train(self) -> None:
        # A run with nothing left to train (MAX_ITER reached or 0) still gets its evaluation.
        if self.trainer.start_iter >= self.trainer.max_iter:
            self._run()

    def after_step(self) -> None:
        it = self.trainer.iter + 1
        if it == self.trainer.max_iter or (self.period > 0 and it % self.period == 0):
            self._run()


class PeriodicWriter(HookBase):
    """Reports every ``period`` iterations and at the last; writers with a ``start(start_iter)`` are
    told where the run starts (to drop what a resumed run redoes)."""

    def __init__(self, writers: list, period: int = 20):
        self.writers, self.period = writers, period

    def before_train(self) -> None:
        for writer in self.writers:
            if hasattr(writer, "start"):
                writer.start(self.trainer.start_iter)

    def after_step(self) -> None:
        it = self.trainer.iter + 1
        if it % self.period == 0 or it == self.trainer.max_iter:
            for writer in self.writers:
                writer.write(self.trainer.storage)

    def after_train(self) -> None:
        for writer in self.writers:
            if hasattr(writer, "close"):
                writer.close()


class EquilibriumStatsHook(HookBase):
    """Logs each equilibrium refinement's last solves: forward/backward iterations, relative
    residuals, RoIs stopped by the protective break and RoIs left above the tolerance
    (``deq/<module>/forward_iterations``, ..., ``forward_unconverged``); nothing while a layer runs
    unrolled (its ``last_stats`` is None then). Every ``period`` iterations it warns when more than
    ``warn_fraction`` of the RoIs solved in that period ended above the tolerance."""

    def __init__(self, model: nn.Module, period: int = 20, warn_fraction: float = 0.05):
        self.layers = {name or "refinement": m for name, m in model.named_modules()
                       if isinstance(m, EquilibriumRefinement)}
        self.period = period
        self.unconverged = UnconvergedSolves(warn_fraction)

    def after_step(self) -> None:
        storage = self.trainer.storage
        for name, layer in self.layers.items():
            tag = name.replace("module.", "").replace("roi_heads.", "")
            solves = {"forward": layer.last_stats, "backward": getattr(layer.backward_strategy, "last_stats", None)}
            for kind, stats in solves.items():
                if stats is None:
                    continue
                summary = stats.summary()
                storage.put_scalar(f"deq/{tag}/{kind}_iterations", summary["iterations"])
                storage.put_scalar(f"deq/{tag}/{kind}_rel_residual", summary["rel_residual"])
                # solves stopped by the protective break (their lowest-residual iterate was used)
                storage.put_scalar(f"deq/{tag}/{kind}_diverged", summary["diverged"])
                storage.put_scalar(f"deq/{tag}/{kind}_unconverged", self.unconverged.add(tag, kind, stats))
        it = self.trainer.iter + 1
        if it % self.period == 0 or it == self.trainer.max_iter:
            self.unconverged.warn(f"the last {self.period} iterations")
