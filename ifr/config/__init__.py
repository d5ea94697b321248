"""cvpods-compatible configuration: ``RCNNFPNConfig`` defaults, overrides, command-line merging."""
from .base_config import BaseConfig, experiment_output_dir
from .config_dict import ConfigDict, ConfigError
from .rcnn_fpn_config import RCNNFPNConfig

__all__ = ["BaseConfig", "experiment_output_dir", "ConfigDict", "ConfigError", "RCNNFPNConfig"]
