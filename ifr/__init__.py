"""IFR: Implicit Feature Refinement for instance segmentation, on torch + torchvision."""

__version__ = "0.1.0"
