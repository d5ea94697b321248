"""Pictures: predictions drawn on images, training curves, fixed-point convergence."""
from .draw import draw_instances
from .plots import plot_residual_traces, plot_training_curves

__all__ = ["draw_instances", "plot_residual_traces", "plot_training_curves"]
