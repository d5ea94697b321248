"""Ready-made settings for runs on the built-in data: config overrides (the quickstart's small model), and
CPU-sized torchvision detectors (``torchvision_detectors``) for the other heads' examples and ablation."""
from .small_model import quickstart_output_dir, small_model_overrides

__all__ = ["quickstart_output_dir", "small_model_overrides"]
