"""Loading an experiment folder: its ``config.py`` (a module-level ``config``) and ``net.py``
(``build_model(cfg)``), as cvpods' tools do from the current directory."""
from __future__ import annotations

import importlib.util
import os
import sys
import traceback
from typing import Callable

from ifr.errors import UserError, user_message


def _import_file(name: str, path: str):
    """The module of ``path``; a file that does not compile or raises as it runs is a UserError
    naming the file, the line and the line's text (a ConfigError it raises is already one)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except UserError:
        raise
    except SyntaxError as e:
        raise UserError(_broken_file_message(path, e.lineno, e.text, f"{type(e).__name__}: {e.msg}")) from None
    except Exception as e:
        frames = [f for f in traceback.extract_tb(e.__traceback__) if os.path.abspath(f.filename) == os.path.abspath(path)]
        line, text = (frames[-1].lineno, frames[-1].line) if frames else (None, None)
        raise UserError(_broken_file_message(path, line, text, f"{type(e).__name__}: {e}")) from None
    return module


def _broken_file_message(path: str, line: int | None, text: str | None, error: str) -> str:
    where = f"{path}, line {line}" + (f": {text.strip()}" if text and text.strip() else "") if line else path
    return (f"{where}: {error}. Fix that line (or copy {os.path.basename(path)} again from the experiment folder it "
            "came from)")


def run_reporting_user_errors(run: Callable, args) -> None:
    """Runs ``run(args)``; a UserError ends the program with its message alone (exit status 2)."""
    try:
        run(args)
    except UserError as e:
        print(f"ERROR: {user_message(e)}", file=sys.stderr)
        sys.exit(2)


def load_experiment(folder: str) -> tuple[object, Callable]:
    """(config, build_model) of the experiment in ``folder``."""
    paths = {name: os.path.join(folder, f"{name}.py") for name in ("config", "net")}
    missing = [p for p in paths.values() if not os.path.isfile(p)]
    if missing:
        raise UserError(f"{folder} is not an experiment folder (missing {', '.join(os.path.basename(p) for p in missing)}"
                        "): run pods_train / pods_test inside one, e.g. cd mask_rcnn.ifr.res50.fpn.coco.multiscale.1x")
    config = getattr(_import_file("ifr_experiment_config", paths["config"]), "config", None)
    build_model = getattr(_import_file("ifr_experiment_net", paths["net"]), "build_model", None)
    if config is None or build_model is None:
        raise UserError(f"{folder}: config.py must define `config` and net.py must define `build_model(cfg)`")
    return config, build_model


def configured(folder: str, overrides: list[str]):
    """The config of the experiment in ``folder`` with the command line's ``KEY VALUE`` overrides, as
    the launcher needs it before the processes start: MODEL.DEVICE chooses their process group's
    backend, OUTPUT_DIR is the folder the job claims."""
    config, _ = load_experiment(folder)
    config.merge_from_list(overrides)
    return config
