"""cvpods' config class protocol: subclasses register dicts of overrides over their parent's values."""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from .config_dict import ConfigDict

logger = logging.getLogger(__name__)


def experiment_output_dir(config_file: str) -> str:
    """Per-experiment output folder for an experiment's ``config.py``: ``$IFR_OUTPUT_ROOT/<folder name>``
    if that variable is set, else ``<folder>/output``. A copied experiment folder gets its own outputs."""
    folder = os.path.dirname(os.path.realpath(config_file))
    root = os.environ.get("IFR_OUTPUT_ROOT")
    return os.path.join(root, os.path.basename(folder)) if root else os.path.join(folder, "output")


class BaseConfig(ConfigDict):
    """Base of all experiment configs.

    A subclass's ``__init__`` calls ``super().__init__()`` and then
    ``self._register_configuration(overrides)``; the overrides are merged recursively over the parent's
    values, so the final config is the chain of dicts from the base class down. Overrides may only
    set keys the parent defines (a misspelled key is a ConfigError naming it); a class that defines
    new settings registers them with ``new_keys=True``.
    """

    def _register_configuration(self, overrides: Mapping, new_keys: bool = False) -> None:
        self.merge(overrides, allow_new_keys=new_keys)

    def link_log(self, link_name: str = "log") -> None:
        """Points a ``log`` symlink in the current folder to OUTPUT_DIR (as cvpods' experiment folders do)."""
        target = os.path.abspath(self.OUTPUT_DIR)
        if os.path.islink(link_name):
            if os.path.realpath(link_name) == os.path.realpath(target):
                return
            os.remove(link_name)
        elif os.path.exists(link_name):
            logger.warning("not linking %s -> %s: %s exists and is not a symlink", link_name, target,
                           link_name)
            return
        try:
            os.makedirs(target, exist_ok=True)
            os.symlink(target, link_name)
        except OSError as e:  # a read-only experiment folder: the run itself is unaffected
            logger.warning("not linking %s -> %s: %s", link_name, target, e.strerror or e)

    def base_defaults(self) -> ConfigDict:
        """The config of the parent class, for ``diff`` logging (cvpods' ``cfg.diff(cls.__base__())``)."""
        return type(self).__mro__[1]()
