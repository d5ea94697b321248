"""docs/configuration.md is generated from the configuration and agrees with it: every key, its default,
a description; regenerating is one command."""
import os
import re
import subprocess
import sys

import pytest

from ifr.config import RCNNFPNConfig
from ifr.config.descriptions import DESCRIPTIONS, READ_BY, reader_of
from ifr.errors import UserError
from ifr.tools import config_reference
from ifr.tools.config_reference import COMMAND, config_leaves, format_value, reference_text, undescribed_keys

from helpers import ROOT

PAGE = os.path.join(ROOT, "docs", "configuration.md")
ROW = re.compile(r"^\| `([A-Z0-9_.]+)` \| (`.*?`) \| `")


def _page_defaults() -> dict[str, str]:
    """key -> default cell of the base configuration's tables of the page."""
    with open(PAGE, encoding="utf-8") as f:
        base = f.read().split("## Experiment folders")[0]
    return {m.group(1): m.group(2) for m in map(ROW.match, base.splitlines()) if m}


def test_every_key_has_a_description():
    missing = undescribed_keys()
    assert not missing, f"key {missing[0]} has no description: add it to DESCRIPTIONS in ifr/config/descriptions.py"


def test_no_description_or_reader_names_a_key_that_does_not_exist():
    keys = {key for key, _ in config_leaves(RCNNFPNConfig())}
    stale = sorted((set(DESCRIPTIONS) | set(READ_BY)) - keys - {".".join(k.split(".")[:2]) for k in keys})
    assert not stale, f"ifr/config/descriptions.py describes keys the config does not have: {stale}"


def test_every_reader_is_a_file_of_the_checkout():
    for key, _ in config_leaves(RCNNFPNConfig()):
        for path in reader_of(key).split(", "):
            assert os.path.isfile(os.path.join(ROOT, path)), f"{key}: reader {path} does not exist"


def test_the_page_lists_every_key_with_its_default():
    on_page = _page_defaults()
    for key, value in config_leaves(RCNNFPNConfig()):
        assert key in on_page, f"key {key} is missing from docs/configuration.md: run {COMMAND}"
        assert on_page[key] == format_value(value), \
            f"key {key}: default {on_page[key]} on the page, {format_value(value)} in the code: run {COMMAND}"
    assert len(on_page) == len(list(config_leaves(RCNNFPNConfig())))


def test_the_page_is_what_the_generator_writes():
    with open(PAGE, encoding="utf-8") as f:
        assert f.read() == reference_text(), f"docs/configuration.md is stale: run {COMMAND}"


def test_a_new_key_without_description_is_named_by_the_generator(monkeypatch):
    original = RCNNFPNConfig.__init__

    def with_new_key(self):
        original(self)
        self._register_configuration(dict(MODEL=dict(ROI_MASK_HEAD=dict(NEW_KNOB=3))), new_keys=True)

    monkeypatch.setattr(RCNNFPNConfig, "__init__", with_new_key)
    assert undescribed_keys() == ["MODEL.ROI_MASK_HEAD.NEW_KNOB"]
    with pytest.raises(UserError, match="MODEL.ROI_MASK_HEAD.NEW_KNOB has no description"):
        reference_text()


def test_check_and_write_from_the_command_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT}
    page = tmp_path / "configuration.md"
    page.write_text("old\n")
    module = [sys.executable, "-m", "ifr.tools.config_reference"]
    stale = subprocess.run([*module, "--check", str(page)], env=env, capture_output=True, text=True)
    assert stale.returncode == 1 and "--write docs/configuration.md" in stale.stderr
    written = subprocess.run([*module, "--write", str(page)], env=env, capture_output=True, text=True)
    assert written.returncode == 0, written.stderr
    fresh = subprocess.run([*module, "--check", str(page)], env=env, capture_output=True, text=True)
    assert fresh.returncode == 0 and "up to date" in fresh.stdout
    assert page.read_text() == reference_text()


def test_folder_overrides_are_listed_and_machine_independent():
    text = reference_text()
    assert "| `MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG` | `True` | `False` |" in text
    assert ROOT not in text  # no absolute path of this checkout (OUTPUT_DIR is described, not printed)
    assert config_reference.MACHINE_DEPENDENT["OUTPUT_DIR"] in text
