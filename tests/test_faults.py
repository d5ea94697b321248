"""Faults a new user hits: each ends in one clear message, and nothing already produced is lost or
silently wrong (issue 14's findings, one test each)."""
import json
import os
import pickle
import shutil

import pytest
import torch

from ifr.checkpoint import CheckpointError
from ifr.config import ConfigError, RCNNFPNConfig
from ifr.deq import IFRBlock
from ifr.engine import Checkpointer
from ifr.engine.defaults import resolve_device, scale_to_world_size
from ifr.tools import quickstart, test_net

from helpers import FOLDERS, ROOT, TINY


@pytest.fixture(autouse=True)
def _datasets(datasets_root):
    """The built-in datasets in the session's folder (not the checkout's datasets/)."""


def _log(out) -> str:
    return open(os.path.join(out, "log.txt")).read()


def _quickstart(root, monkeypatch, max_iter, *extra):
    monkeypatch.setenv("IFR_OUTPUT_ROOT", str(root))
    quickstart.main(["--max-iter", str(max_iter), "--no-progress", *TINY, "DATASETS.TEST", "()", *extra])
    return os.path.join(str(root), "quickstart")


def _fails(capsys, run) -> str:
    """The one-line error a command ends with (exit status 2, no traceback)."""
    with pytest.raises(SystemExit) as info:
        run()
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ERROR: ") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def _finite(path) -> bool:
    state = torch.load(path, weights_only=True)["model"]
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


# 2: a diverging run never leaves a non-finite checkpoint as its last one, and says where to go back to
def test_a_diverging_run_keeps_its_last_good_checkpoint_and_says_how_to_continue(tmp_path, monkeypatch, capsys):
    err = _fails(capsys, lambda: _quickstart(tmp_path, monkeypatch, 8, "SOLVER.OPTIMIZER.BASE_LR", "1e6",
                                             "SOLVER.CHECKPOINT_PERIOD", "1", "SOLVER.LR_SCHEDULER.WARMUP_ITERS", "0",
                                             "SOLVER.CLIP_GRADIENTS.ENABLED", "False"))
    out = os.path.join(str(tmp_path), "quickstart")
    # the finite checkpoints written while the losses exploded are not offered (tests/test_run_records.py
    # follows this advice)
    assert "non-finite" in err and "No checkpoint of this run is from before the losses started rising" in err
    assert "e.g. --overwrite SOLVER.OPTIMIZER.BASE_LR 1e+05" in err
    assert all(_finite(os.path.join(out, f)) for f in os.listdir(out) if f.endswith(".pth"))


# 3: non-finite weights are refused when loaded, naming the tensors
def test_loading_non_finite_weights_is_an_error_naming_the_tensors(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
    state = model.state_dict()
    state["1.weight"][0, 0] = float("nan")
    torch.save({"model": state}, tmp_path / "nan.pth")
    with pytest.raises(CheckpointError, match=r"NaN or infinite values in 1 of its 4 tensors \(1.weight\).*diverged"):
        Checkpointer(model, str(tmp_path)).load(str(tmp_path / "nan.pth"))


# 4: solves that stop far from their tolerance are warned about in the log and counted in metrics.json
def test_unconverged_solves_are_warned_about_and_counted(tmp_path, monkeypatch):
    out = _quickstart(tmp_path, monkeypatch, 2, "MODEL.ROI_MASK_HEAD.PRETRAINED_STEPS", "0",
                      "MODEL.ROI_MASK_HEAD.F_THRES", "1", "MODEL.ROI_MASK_HEAD.B_THRES", "1",
                      "MODEL.ROI_MASK_HEAD.F_TOL", "1e-9", "MODEL.ROI_MASK_HEAD.B_TOL", "1e-9")
    log = _log(out)
    assert "the forward fixed-point solve ended above its tolerance" in log and "raise MODEL.ROI_MASK_HEAD.F_THRES" in log
    assert "the backward fixed-point solve ended above its tolerance" in log
    metrics = [json.loads(line) for line in open(os.path.join(out, "metrics.json"))]
    assert metrics[-1]["deq/mask_head.refinement/forward_unconverged"] > 0
    assert metrics[-1]["deq/mask_head.refinement/backward_unconverged"] > 0


# 5: an output folder that cannot be written: one line at start-up, and mid-run with the checkpoints kept
def test_an_unwritable_output_dir_is_one_error_line_at_start(tmp_path, monkeypatch, capsys):
    (tmp_path / "a_file").write_text("not a folder")
    err = _fails(capsys, lambda: _quickstart(tmp_path, monkeypatch, 2, "OUTPUT_DIR", str(tmp_path / "a_file" / "run")))
    assert f"cannot write to OUTPUT_DIR {tmp_path / 'a_file' / 'run'}" in err


def test_a_checkpoint_that_cannot_be_written_mid_run_is_one_error_line(tmp_path, monkeypatch, capsys):
    real_save, calls = torch.save, []

    def save_fails_the_second_time(data, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise RuntimeError(f"File {path} cannot be opened.")
        return real_save(data, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_fails_the_second_time)
    err = _fails(capsys, lambda: _quickstart(tmp_path, monkeypatch, 4, "SOLVER.CHECKPOINT_PERIOD", "1"))
    out = os.path.join(str(tmp_path), "quickstart")
    assert f"cannot write checkpoint {os.path.join(out, 'model_0000002.pth')}" in err and "--resume" in err
    assert sorted(f for f in os.listdir(out) if ".pth" in f) == ["model_0000001.pth"]
    assert _finite(os.path.join(out, "model_0000001.pth"))


# 7: an unsafe pickle in a .pth file (or a file without extension) gets the project's refusal
@pytest.mark.parametrize("name", ["legacy.pth", "no_extension"])
def test_an_unsafe_legacy_pickle_is_refused_without_running_it(tmp_path, name):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    with open(tmp_path / name, "wb") as f:
        pickle.dump({"model": Payload()}, f, protocol=2)
    with pytest.raises(CheckpointError) as info:
        Checkpointer(torch.nn.Linear(2, 2), str(tmp_path)).load(str(tmp_path / name))
    message = str(info.value)
    assert message.startswith(f"refusing to load {tmp_path / name}: it references posix.system")
    assert "weights_only" not in message and len(message.splitlines()) == 1
    assert not marker.exists()


# 8: missing image files stop the run at its start
def test_missing_training_images_are_found_before_training_starts(tmp_path, monkeypatch, capsys):
    from ifr.data import get_dataset_dicts, get_metadata, register_dataset, registered_datasets

    def records():  # loaded inside the run, as datasets are
        selected = [dict(r) for r in get_dataset_dicts("synthetic_shapes_train")[:8]]
        for r in selected[:2]:
            r["file_name"] = str(tmp_path / "gone" / os.path.basename(r["file_name"]))
        return selected

    if "train_with_missing_files" not in registered_datasets():
        register_dataset("train_with_missing_files", records, lambda: get_metadata("synthetic_shapes_train"))
    err = _fails(capsys, lambda: _quickstart(tmp_path, monkeypatch, 2, "DATASETS.TRAIN", "('train_with_missing_files',)"))
    assert "2 of the 8 training images do not exist" in err and str(tmp_path / "gone") in err
    assert not os.path.exists(os.path.join(str(tmp_path), "quickstart", "metrics.json"))  # before any iteration


# 10: --resume takes the newest checkpoint that loads; starting over existing checkpoints needs asking
def test_resume_falls_back_to_the_newest_loadable_checkpoint(tmp_path, monkeypatch, capsys):
    out = _quickstart(tmp_path, monkeypatch, 4, "SOLVER.CHECKPOINT_PERIOD", "1")
    os.remove(os.path.join(out, "model_final.pth"))  # last_checkpoint now names a file that is gone
    quickstart.main(["--max-iter", "4", "--no-progress", "--resume", *TINY, "DATASETS.TEST", "()",
                     "SOLVER.CHECKPOINT_PERIOD", "1"])
    newest = os.path.join(out, "model_0000003.pth")
    assert f"last_checkpoint names a file that is gone, so resuming from {newest}" in _log(out)
    assert torch.load(os.path.join(out, "model_final.pth"), weights_only=True)["iteration"] == 3
    # a truncated newest checkpoint: the older one is taken, and both are named
    with open(os.path.join(out, "model_final.pth"), "wb") as f:
        f.write(b"PK\x03\x04 truncated")
    quickstart.main(["--max-iter", "4", "--no-progress", "--resume", *TINY, "DATASETS.TEST", "()"])
    log = _log(out)
    assert "cannot resume from" in log and f"model_final.pth cannot be loaded, so resuming from {newest}" in log
    # without --resume, the existing run is not silently restarted over
    err = _fails(capsys, lambda: quickstart.main(["--max-iter", "4", "--no-progress", *TINY, "DATASETS.TEST", "()"]))
    assert "already holds the checkpoints of a run" in err and "--resume" in err and "--overwrite" in err
    quickstart.main(["--max-iter", "2", "--no-progress", "--overwrite", *TINY, "DATASETS.TEST", "()"])
    assert torch.load(os.path.join(out, "model_final.pth"), weights_only=True)["iteration"] == 1


# 11: pods_test with empty weights uses the folder's checkpoints or stops; a folder is not a checkpoint
def test_pods_test_with_empty_weights_or_a_folder(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "experiment"
    shutil.copytree(os.path.join(ROOT, FOLDERS["ifr"]), folder)
    monkeypatch.chdir(folder)
    common = [*TINY, "MODEL.DEVICE", "cpu", "MODEL.ROI_HEADS.NUM_CLASSES", "3", "OUTPUT_DIR", str(tmp_path / "empty"),
              "DATASETS.TEST", "('synthetic_shapes_val',)"]
    err = _fails(capsys, lambda: test_net.main(["MODEL.WEIGHTS", "", *common]))
    assert "no checkpoints model_*.pth in" in err and "to evaluate" in err
    (tmp_path / "weights").mkdir()
    err = _fails(capsys, lambda: test_net.main(["MODEL.WEIGHTS", str(tmp_path / "weights"), *common]))
    assert "is a folder, not a file" in err


# 12, 13: settings that leave nothing to do, and devices that do not exist
def test_settings_that_leave_nothing_to_do_are_config_errors(tmp_path, monkeypatch, capsys):
    err = _fails(capsys, lambda: _quickstart(tmp_path, monkeypatch, 2, "SOLVER.LR_SCHEDULER.MAX_ITER", "-5"))
    assert "SOLVER.LR_SCHEDULER.MAX_ITER is -5: training needs at least one iteration" in err
    cfg = RCNNFPNConfig()
    cfg.SOLVER.merge(dict(IMS_PER_BATCH=4, IMS_PER_DEVICE=4, LR_SCHEDULER=dict(MAX_ITER=1)))  # the quickstart's
    with pytest.raises(ConfigError, match="MAX_ITER 1 for 1 processes leaves no iteration for 3"):
        scale_to_world_size(cfg, 3)
    cfg.MODEL.DEVICE = "tpu"
    with pytest.raises(ConfigError, match="MODEL.DEVICE 'tpu' is not a device"):
        resolve_device(cfg)


# 9: float32 mask-head gradients in the default (channels_last) layout match float64
@pytest.mark.parametrize("offset", [3.0, 30.0])
@pytest.mark.parametrize("iteration", [0, 100], ids=["unrolled", "implicit"])
def test_mask_head_gradients_in_float32_match_float64_with_large_group_means(offset, iteration):
    """The IFR head at the original initialisation, in its default (channels_last) layout, on RoI
    features whose groups have large means. The implicit phase solves to 1e-6 in both precisions (a
    tolerance float32 reaches): a solve cut at B_TOL 1e-4 is itself off the exact gradient by up to
    5e-3 on such inputs (in float64 too), which would hide the precision being tested.

    The gradient is the refinement's (the tower's output times a fixed upstream gradient), not the
    whole head's: after the deconv, a ReLU input within float32 rounding of 0 can take the other
    sign than in float64, which switches that element's gradient on or off (a finite step, not a
    rounding error; seen with torch 2.6's deconv kernels, 1e-3 off). That is the ReLU's kink, not
    the precision of the solve, GroupNorm or implicit backward this test holds to float32 noise."""
    from ifr.deq import RefinementTower
    from ifr.modeling.mask_head import build_ifr_mask_head

    cfg = RCNNFPNConfig()
    cfg.MODEL.ROI_MASK_HEAD.merge(dict(PRETRAINED_STEPS=50, F_TOL=1e-6, B_TOL=1e-6, F_THRES=60, B_THRES=60))
    assert cfg.MODEL.ROI_MASK_HEAD.CHANNELS_LAST
    torch.manual_seed(0)
    head = build_ifr_mask_head(cfg, 256).train()  # the original's initialisation
    x = torch.randn(8, 256, 14, 14, generator=torch.Generator().manual_seed(1)) + offset
    upstream = torch.randn(8, 256, 14, 14, generator=torch.Generator().manual_seed(2))
    grads = {}
    for dtype in (torch.float32, torch.float64):
        head = head.to(dtype)
        head.zero_grad()
        inputs = x.detach().to(dtype).clone().requires_grad_()
        refined = RefinementTower.forward(head, head.in_layout(inputs), iteration=iteration)
        (refined * upstream.to(dtype)).sum().backward()
        grads[dtype] = [inputs.grad.clone()] + [p.grad.clone() for p in head.refinement.parameters()]
    errors = [((low.double() - high).norm() / high.norm()).item() for low, high in zip(*grads.values())]
    assert max(errors) < 1e-5, errors


def test_shifted_group_norm_is_as_precise_in_channels_last_as_in_nchw():
    block = IFRBlock(256, num_groups=4)
    x = (torch.randn(16, 256, 14, 14, dtype=torch.float64) + 30)
    reference = block.gn3.double()(x)
    norm = block.gn3.float()
    for layout in (torch.contiguous_format, torch.channels_last):
        out = norm(x.float().contiguous(memory_format=layout))
        assert ((out.double() - reference).norm() / reference.norm()).item() < 3e-6
