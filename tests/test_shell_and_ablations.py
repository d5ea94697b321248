"""The user's verbs from a plain shell, and folder copies switched to every mask head."""
import os
import re
import shutil
import subprocess

import pytest
import torch

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
