"""Ready-made config overrides for runs on the built-in data (the quickstart's small model)."""
from .small_model import quickstart_output_dir, small_model_overrides

__all__ = ["quickstart_output_dir", "small_model_overrides"]
