"""A nested dict with attribute access and cvpods' config API: merge, merge_from_list, diff, dump."""
from __future__ import annotations

import ast
import copy
import difflib
import json
import os
from collections.abc import Mapping
from typing import Any, Iterable

from ifr.errors import UserError
from ifr.utils.atomic import open_atomically


class ConfigError(UserError, ValueError):
    """A config key that does not exist or a value of the wrong type."""


class UnknownConfigKey(ConfigError, AttributeError):
    """Attribute access to a key the config does not have (an AttributeError too, so ``hasattr`` and
    ``getattr(cfg, key, default)`` keep working)."""


def _wrap(value: Any) -> Any:
    if isinstance(value, ConfigDict):
        return value
    if isinstance(value, Mapping):
        return ConfigDict(value)
    return value


class ConfigDict(dict):
    """``dict`` whose keys are also attributes, recursively: ``cfg.MODEL.ROI_HEADS.NUM_CLASSES``."""

    def __init__(self, mapping: Mapping | None = None, **kwargs: Any):
        super().__init__()
        for key, value in {**(mapping or {}), **kwargs}.items():
            self[key] = value

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, _wrap(value))

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise UnknownConfigKey(_unknown_key_message(key, self.keys())) from None

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value

    def __delattr__(self, key: str) -> None:
        del self[key]

    def __deepcopy__(self, memo):
        return ConfigDict({k: copy.deepcopy(v, memo) for k, v in self.items()})

    def merge(self, other: Mapping, allow_new_keys: bool = False, _prefix: str = "") -> "ConfigDict":
        """Recursively merges ``other`` into self (mappings merge, anything else replaces).

        A key that self does not have is a ConfigError naming it (a misspelled override must not
        silently become a new, unread setting) unless ``allow_new_keys``.
        """
        for key, value in other.items():
            if key not in self and not allow_new_keys:
                raise ConfigError(_unknown_key_message(_prefix + key, _all_keys(self, _prefix)))
            if isinstance(self.get(key), Mapping) and isinstance(value, Mapping):
                self[key].merge(value, allow_new_keys, f"{_prefix}{key}.")
            else:
                self[key] = value
        return self

    def merge_from_list(self, pairs: Iterable[str]) -> "ConfigDict":
        """Applies command-line ``KEY.PATH VALUE`` pairs.

        Values are parsed as Python literals (a string that is not a literal stays a string) and must
        have the type of the value they replace; only existing keys can be set.
        """
        pairs = list(pairs)
        if len(pairs) % 2:
            raise ConfigError(f"config overrides come in KEY VALUE pairs, got an odd number: {pairs}")
        for dotted, raw in zip(pairs[0::2], pairs[1::2]):
            node, leaf = self._walk(dotted)
            node[leaf] = _coerce(dotted, _parse_literal(raw), node[leaf])
        return self

    def _walk(self, dotted: str) -> tuple["ConfigDict", str]:
        """The dict holding ``dotted``'s last component, and that component; the key must exist."""
        parts = dotted.split(".")
        node: Any = self
        for depth, part in enumerate(parts):
            if not isinstance(node, ConfigDict) or part not in node:
                raise ConfigError(_unknown_key_message(dotted, _all_keys(self)))
            if depth < len(parts) - 1:
                node = node[part]
        return node, parts[-1]

    def diff(self, other: Mapping) -> "ConfigDict":
        """The entries of self that are absent from ``other`` or differ from it (values from self)."""
        out = ConfigDict()
        for key, value in self.items():
            if key not in other:
                out[key] = value
            elif isinstance(value, ConfigDict) and isinstance(other[key], Mapping):
                sub = value.diff(other[key])
                if sub:
                    out[key] = sub
            elif value != other[key]:
                out[key] = value
        return out

    def to_dict(self) -> dict:
        return {k: v.to_dict() if isinstance(v, ConfigDict) else v for k, v in self.items()}

    def dump(self, path: str) -> None:
        """Writes the whole config as JSON (tuples become lists)."""
        with open_atomically(path) as f:
            json.dump(self.to_dict(), f, indent=2, default=repr)
            f.write("\n")


def _all_keys(cfg: Mapping, prefix: str = "") -> list[str]:
    keys = []
    for key, value in cfg.items():
        full = f"{prefix}{key}"
        keys.append(full)
        if isinstance(value, Mapping):
            keys.extend(_all_keys(value, full + "."))
    return keys


def _unknown_key_message(key: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown config key {key!r}{hint}"


def _parse_literal(raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def _coerce(key: str, value: Any, default: Any) -> Any:
    """``value`` converted to the type of ``default``, or a ConfigError that says what was expected."""
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, str):
        return value if isinstance(value, str) else str(value)
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, (list, tuple)):
        if isinstance(value, (list, tuple)):
            return type(default)(value)
    elif isinstance(default, Mapping):
        if isinstance(value, Mapping):
            return ConfigDict(value)
    elif isinstance(value, type(default)):
        return value
    raise ConfigError(
        f"config key {key}: expected a value of type {type(default).__name__} (like the default "
        f"{default!r}), got {value!r} of type {type(value).__name__}")
