"""cvpods-compatible configuration: ``RCNNFPNConfig`` defaults, overrides, command-line merging."""
from .base_config import BaseConfig
from .config_dict import ConfigDict, ConfigError
from .rcnn_fpn_config import RCNNFPNConfig

__all__ = ["BaseConfig", "ConfigDict", "ConfigError", "RCNNFPNConfig"]
