"""Training loop, hooks, checkpoints and the run set-up shared by pods_train / pods_test."""
from .checkpoint import CheckpointError, Checkpointer
from .defaults import DefaultTrainer, default_argument_parser, default_setup, evaluate
from .events import EventStorage
from .train_loop import SimpleTrainer

__all__ = ["CheckpointError", "Checkpointer", "DefaultTrainer", "EventStorage", "SimpleTrainer",
           "default_argument_parser", "default_setup", "evaluate"]
