"""Writes the configuration reference (docs/configuration.md) from the configuration itself: every key
of ``RCNNFPNConfig`` with its default, the component that reads it, its meaning
(``ifr/config/descriptions.py``) and whether other values are refused (``ifr/config/support.py``),
then each experiment folder's overrides.

    python -m ifr.tools.config_reference --write docs/configuration.md   # regenerate
    python -m ifr.tools.config_reference --check docs/configuration.md   # exit 1 if the page is stale
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from typing import Any, Iterator

from ifr.config import RCNNFPNConfig
from ifr.config.descriptions import DESCRIPTIONS, reader_of
from ifr.config.support import UNSUPPORTED
from ifr.errors import UserError
from ifr.paths import EXPERIMENTS

from .experiment import load_experiment, run_reporting_user_errors

COMMAND = "python -m ifr.tools.config_reference --write docs/configuration.md"
# Values that depend on the machine: shown as what they are, not as one machine's absolute path.
MACHINE_DEPENDENT = {"OUTPUT_DIR": "`<folder>/output` (`$IFR_OUTPUT_ROOT/<folder name>` when that is set)"}


def config_leaves(node: Mapping, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf of a config tree, in definition order (an empty dict is a leaf)."""
    for key, value in node.items():
        if isinstance(value, Mapping) and value:
            yield from config_leaves(value, f"{prefix}{key}.")
        else:
            yield prefix + key, value


def undescribed_keys(cfg: Mapping | None = None) -> list[str]:
    """Keys of the base config without a line in ``DESCRIPTIONS``."""
    return [key for key, _ in config_leaves(cfg or RCNNFPNConfig()) if key not in DESCRIPTIONS]


def format_value(value: Any) -> str:
    """A default as one writes it on the command line (a Python literal), in a table cell."""
    text = repr(value.to_dict() if hasattr(value, "to_dict") else value)
    return "`" + text.replace("|", "\\|") + "`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _section(key: str) -> str:
    parts = key.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 else parts[0] if len(parts) == 2 else "top level"


def _refused(key: str) -> str:
    if key not in UNSUPPORTED:
        return ""
    supported, reason = UNSUPPORTED[key]
    return f"only {format_value(supported)}: {_cell(reason)}"


def base_reference(cfg: Mapping) -> list[str]:
    missing = undescribed_keys(cfg)
    if missing:
        raise UserError(f"config key {missing[0]} has no description: add it to DESCRIPTIONS in "
                        f"ifr/config/descriptions.py ({len(missing)} key(s) without one: {', '.join(missing)})")
    lines: list[str] = []
    section = None
    for key, value in config_leaves(cfg):
        if _section(key) != section:
            section = _section(key)
            lines += ["", f"### {section}", "", "| key | default | read by | meaning | other values |",
                      "|:--|:--|:--|:--|:--|"]
        lines.append(f"| `{key}` | {format_value(value)} | `{reader_of(key)}` | {_cell(DESCRIPTIONS[key])} | "
                     f"{_refused(key) or 'accepted'} |")
    return lines


def folder_overrides(base: Mapping) -> list[str]:
    lines: list[str] = []
    for folder in EXPERIMENTS.values():
        config, _ = load_experiment(folder)
        name = os.path.basename(folder)
        lines += ["", f"### `{name}`", "", f"`{name}/config.py` sets:", "", "| key | value | default |",
                  "|:--|:--|:--|"]
        defaults = dict(config_leaves(base))
        for key, value in config_leaves(config.diff(base)):
            shown = MACHINE_DEPENDENT.get(key) or format_value(value)
            lines.append(f"| `{key}` | {shown} | {format_value(defaults[key])} |")
    return lines


def reference_text() -> str:
    """The whole page."""
    base = RCNNFPNConfig()
    head = [
        "# Configuration reference",
        "",
        "Every key of the base configuration (`ifr.config.RCNNFPNConfig`, cvpods' R-CNN + FPN defaults) with",
        "its default, the file that reads it, what it means and whether another value is accepted, then what",
        "each experiment folder's `config.py` changes. How configs are written and overridden:",
        "[experiments.md](experiments.md). Every key is either read by a run or refused at another value",
        "(tested); a key that is not listed here does not exist, and naming it is an error.",
        "",
        "This page is generated, and the test suite fails when it differs from the code. After adding or",
        "changing a key (its meaning goes in `ifr/config/descriptions.py`, refused values in",
        "`ifr/config/support.py`), regenerate it:",
        "",
        "```bash",
        COMMAND,
        "```",
        "",
        "\"only X\" in the last column: a cvpods key this project does not implement; any other value stops",
        "the run with a ConfigError naming the key and the reason.",
        "",
        "## Base configuration",
    ]
    return "\n".join(head + base_reference(base) + ["", "## Experiment folders"] + folder_overrides(base)) + "\n"


def write_atomically(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def run(args) -> None:
    text = reference_text()
    if args.write:
        write_atomically(args.write, text)
        print(f"wrote {args.write}")
        return
    if args.check:
        if not os.path.isfile(args.check):
            raise UserError(f"{args.check} does not exist: run {COMMAND}")
        with open(args.check, encoding="utf-8") as f:
            if f.read() != text:
                print(f"{args.check} differs from the configuration: run {COMMAND}", file=sys.stderr)
                sys.exit(1)
        print(f"{args.check} is up to date")
        return
    sys.stdout.write(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", metavar="PATH", help="write the page to PATH (e.g. docs/configuration.md)")
    group.add_argument("--check", metavar="PATH", help="exit 1 if PATH differs from the generated page")
    run_reporting_user_errors(run, parser.parse_args(argv))


if __name__ == "__main__":
    main()
