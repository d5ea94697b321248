"""Weight files: reading every supported format safely, renaming between naming schemes (this
project, cvpods/detectron2, Caffe2 ``.pkl``, torchvision ResNet), checking input conventions, and
loading into a model with a report. Depends on torch and numpy only."""
from .conventions import MSRA, TORCHVISION, InputConvention
from .loading import (MODEL_ZOO_PREFIX, CheckpointError, LoadReport, export_cvpods_checkpoint,
                      load_checkpoint_into_model, read_checkpoint, resolve_weights_path)
from .naming import detect_format, ifr_to_cvpods
from .safe_pickle import UnsafePickleError, load_pickle_safely

__all__ = [
    "CheckpointError", "InputConvention", "LoadReport", "MODEL_ZOO_PREFIX", "MSRA", "TORCHVISION",
    "UnsafePickleError", "detect_format", "export_cvpods_checkpoint", "ifr_to_cvpods", "load_checkpoint_into_model",
    "load_pickle_safely", "read_checkpoint", "resolve_weights_path",
]
