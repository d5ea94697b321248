"""The command-line options and loading shared by the tools that inspect a trained model (demo,
compute knob, convergence plot): an experiment folder (or the quickstart's small model), config
overrides, and MODEL.WEIGHTS loaded strictly."""
from __future__ import annotations

import argparse
import os
import re
from typing import Callable

from torch import nn

from ifr.config.support import check_supported
from ifr.engine import Checkpointer
from ifr.engine.defaults import resolve_device, setup_logger
from ifr.errors import UserError
from ifr.presets.small_model import IFR_EXPERIMENT, small_model_overrides

from .experiment import load_experiment


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--experiment", default=None, help="experiment folder (default: the current folder)")
    parser.add_argument("--quickstart", action="store_true",
                        help="the quickstart's small model (python -m ifr.tools.quickstart); MODEL.WEIGHTS defaults "
                             "to its model_final.pth")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides (MODEL.WEIGHTS ...)")


# A config key on the command line: upper-case dotted names such as MODEL.WEIGHTS.
_CONFIG_KEY = re.compile(r"[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+")


def parse_tool_arguments(parser: argparse.ArgumentParser, argv: list[str] | None, *list_options: str):
    """Parses ``argv``; KEY VALUE overrides written right after a list option (``--input a.jpg b.jpg
    MODEL.WEIGHTS w.pth``), which argparse would take as more list items, go to ``opts``."""
    args = parser.parse_args(argv)
    for name in list_options:
        values = getattr(args, name)
        split = next((i for i, v in enumerate(values) if _CONFIG_KEY.fullmatch(v)), len(values))
        setattr(args, name, values[:split])
        args.opts = values[split:] + args.opts
        if not values[:split]:
            parser.error(f"--{name.replace('_', '-')} needs at least one value before the config overrides")
    return args


def load_tool_config(args) -> tuple[object, Callable[[object], nn.Module]]:
    """(config with the overrides applied and checked, the folder's build_model) from the parsed
    arguments; with ``--quickstart`` the small model, MODEL.WEIGHTS its trained model_final.pth."""
    folder = args.experiment or (IFR_EXPERIMENT if args.quickstart else os.getcwd())
    config, build_model = load_experiment(folder)
    if args.quickstart:
        config.merge(small_model_overrides(max_iter=0, experiment=folder))
        config.MODEL.WEIGHTS = os.path.join(config.OUTPUT_DIR, "model_final.pth")
    config.merge_from_list(args.opts)
    check_supported(config)
    setup_logger(None)
    return config, build_model


def load_trained_model(args) -> tuple[object, nn.Module]:
    """(config, model in eval mode with MODEL.WEIGHTS loaded) from the parsed arguments."""
    config, build_model = load_tool_config(args)
    if not config.MODEL.WEIGHTS:
        raise UserError("pass the weights of the model to inspect: MODEL.WEIGHTS /path/to/model_final.pth")
    resolve_device(config)
    model = build_model(config).to(config.MODEL.DEVICE)
    Checkpointer(model, config.OUTPUT_DIR).load(config.MODEL.WEIGHTS, strict=True)
    return config, model.eval()
