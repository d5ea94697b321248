"""The user's verbs from a plain shell, and folder copies switched to every mask head."""
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

import ifr
from ifr.engine.defaults import setup_logger
from ifr.presets import quickstart_output_dir
from ifr.tools import quickstart

from helpers import FOLDERS, ROOT, TINY

PLAIN_SHELL = {"PATH": "/usr/bin:/bin"}  # env -i PATH=/usr/bin:/bin: nothing activated
HEADS = {"conv": "roi_heads.mask_head.mask_fcn4.weight",
         "weight_sharing": "roi_heads.mask_head.refinement.block.conv1.weight",
         "ifr": "roi_heads.mask_head.refinement.block.conv1.weight_g"}


@pytest.mark.skipif(not os.path.exists(os.path.join(ROOT, ".venv", "bin", "pods_train")),
                    reason="the README's set-up (bash scripts/setup.sh) has not created .venv in this checkout")
@pytest.mark.parametrize("script, usage", [("pods_train.sh", "usage: pods_train"), ("pods_test.sh", "usage: pods_test"),
                                           ("pods_demo.sh", "usage: pods_demo")])
def test_folder_scripts_run_from_a_plain_shell_in_any_folder(tmp_path, script, usage):
    path = os.path.join(ROOT, FOLDERS["ifr"], script)
    done = subprocess.run(["sh", path, "--help"], cwd=tmp_path, env=PLAIN_SHELL, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert usage in done.stdout


def test_without_a_venv_the_scripts_say_in_one_line_what_to_run(tmp_path):
    checkout = tmp_path / "checkout"
    shutil.copytree(os.path.join(ROOT, "scripts"), checkout / "scripts")
    shutil.copytree(os.path.join(ROOT, FOLDERS["ifr"]), checkout / "experiment")
    for script in ("pods_train.sh", "pods_test.sh", "pods_demo.sh"):
        done = subprocess.run(["sh", str(checkout / "experiment" / script), "--help"], cwd=tmp_path, env=PLAIN_SHELL,
                              capture_output=True, text=True)
        assert done.returncode == 2
        assert done.stdout == "" and len(done.stderr.strip().splitlines()) == 1
        assert f"bash {checkout}/scripts/setup.sh" in done.stderr and "is not installed" in done.stderr


def _console_script(path, python, text):
    """A console script as pip writes it: a #! line naming its environment's interpreter."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!{python}\nprint({text!r})\n")
    path.chmod(0o755)


def test_inside_a_checkout_the_scripts_run_its_own_code_not_another_clones(tmp_path):
    """Another clone's environment active (its pods_train first on PATH): the checkout's scripts run the
    checkout's .venv, accept a pods_train on PATH only when its interpreter imports this checkout's ifr,
    and otherwise refuse in one line (they used to run the other clone's code)."""
    checkout, other = tmp_path / "checkout", tmp_path / "other_clone"
    shutil.copytree(os.path.join(ROOT, "scripts"), checkout / "scripts")
    shutil.copytree(os.path.join(ROOT, FOLDERS["ifr"]), checkout / "experiment")
    for clone in (checkout, other):
        (clone / "ifr").mkdir(parents=True)
        (clone / "ifr" / "__init__.py").write_text("")
        # the environment of that clone: python importing its ifr (as `pip install -e` there would)
        python = clone / "env" / "bin" / "python"
        python.parent.mkdir(parents=True)
        python.write_text(f'#!/bin/sh\nPYTHONPATH={clone} exec {sys.executable} "$@"\n')
        python.chmod(0o755)
        _console_script(clone / "env" / "bin" / "pods_train", clone / "env" / "bin" / "python", f"pods_train of {clone.name}")
    script = str(checkout / "experiment" / "pods_train.sh")

    def run(env_bin):
        return subprocess.run(["sh", script, "--help"], cwd=tmp_path, capture_output=True, text=True,
                              env={"PATH": f"{env_bin}:/usr/bin:/bin"})

    refused = run(other / "env" / "bin")
    assert refused.returncode == 2 and refused.stdout == "" and len(refused.stderr.strip().splitlines()) == 1
    assert f"runs the ifr of {other}/ifr, not this checkout's ({checkout}/ifr)" in refused.stderr
    accepted = run(checkout / "env" / "bin")  # an environment with this checkout installed
    assert accepted.returncode == 0 and accepted.stdout == "pods_train of checkout\n", accepted.stderr
    _console_script(checkout / ".venv" / "bin" / "pods_train", sys.executable, "pods_train of the checkout's .venv")
    own = run(other / "env" / "bin")
    assert own.returncode == 0 and own.stdout == "pods_train of the checkout's .venv\n", own.stderr


def test_the_first_log_line_names_the_package_that_runs(tmp_path):
    setup_logger(str(tmp_path))
    first = open(tmp_path / "log.txt").readline()
    assert first.rstrip().endswith(f"ifr {ifr.__version__} from {os.path.dirname(os.path.realpath(ifr.__file__))}")


@pytest.mark.parametrize("folder", sorted(FOLDERS))
@pytest.mark.parametrize("head", sorted(HEADS))
def test_a_copied_folder_trains_with_each_mask_head(tmp_path, monkeypatch, folder, head):
    """Copy a folder, switch net.py's mask head, train 2 iterations of the quickstart's small model."""
    copy = tmp_path / f"{FOLDERS[folder]}.{head}"
    shutil.copytree(os.path.join(ROOT, FOLDERS[folder]), copy)
    net = (copy / "net.py").read_text()
    switched = re.sub(r'mask_head="\w+"', f'mask_head="{head}"', net)
    assert switched != net or f'mask_head="{head}"' in net
    (copy / "net.py").write_text(switched)
    monkeypatch.setenv("IFR_OUTPUT_ROOT", str(tmp_path / "out"))
    # The IFR head runs both phases; the cascade copies also accumulate gradients over 2 slices.
    extra = ["SOLVER.BATCH_SUBDIVISIONS", "2"] if folder == "cascade" else []
    quickstart.main(["--experiment", str(copy), "--max-iter", "2", "--no-progress", *TINY, "DATASETS.TEST", "()",
                     "MODEL.ROI_MASK_HEAD.PRETRAINED_STEPS", "1", *extra])
    state = torch.load(os.path.join(quickstart_output_dir(str(copy)), "model_final.pth"), weights_only=True)["model"]
    assert HEADS[head] in state
    assert ("roi_heads.box_head.2.fc1.weight" in state) == (folder == "cascade")
