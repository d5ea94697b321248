"""End to end: the experiment folders' models trained for a few iterations on the built-in data,
evaluated with the COCO tables; checkpoints and resume; the command-line errors users hit."""
import json
import os
import shutil

import pytest
import torch

from ifr.engine import Checkpointer, CheckpointError
from ifr.presets import quickstart_output_dir
from ifr.tools import quickstart, test_net, train_net

from helpers import FOLDERS, ROOT, TINY

MAX_ITER = 12


def _train(folder, output_root, monkeypatch, extra=()):
    monkeypatch.setenv("IFR_OUTPUT_ROOT", str(output_root))
    quickstart.main(["--experiment", os.path.join(ROOT, folder), "--max-iter", str(MAX_ITER), "--no-progress",
                     *TINY, *extra])
    out = quickstart_output_dir(os.path.join(ROOT, folder))
    name = os.path.basename(os.path.normpath(str(folder)))
    assert os.path.basename(out) == ("quickstart" if name == FOLDERS["ifr"] else f"quickstart-{name}")
    with open(os.path.join(out, "metrics.json")) as f:
        return out, [json.loads(line) for line in f]


@pytest.mark.parametrize("head", ["baseline", "weight_sharing", "ifr", "cascade"])
def test_each_mask_head_trains_and_evaluates(head, tmp_path, monkeypatch, val_subset):
    """Each experiment folder (the baseline: Mask R-CNN's 4-conv head) trains and evaluates on the built-in data."""
    out, metrics = _train(FOLDERS[head], tmp_path / "out", monkeypatch)

    losses = [m["total_loss"] for m in metrics if "total_loss" in m]
    stage_losses = {k for k in metrics[-1] if "_stage" in k}
    if head == "cascade":
        assert stage_losses == {f"loss_{n}_stage{k}" for n in ("cls", "box_reg") for k in range(3)}
        assert all(torch.isfinite(torch.tensor([m[k] for m in metrics for k in stage_losses])))
    else:
        assert not stage_losses
    assert len(losses) == MAX_ITER and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    # checkpoints and the final evaluation's files
    assert open(os.path.join(out, "last_checkpoint")).read() == "model_final.pth"
    assert os.path.isfile(os.path.join(out, f"model_{MAX_ITER // 4:07d}.pth"))
    results = json.load(open(os.path.join(out, "inference", "coco_eval_results.json")))
    assert set(results) == {"bbox", "segm"} and set(results["segm"]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert os.path.isfile(os.path.join(out, "inference", "coco_instances_results.json"))
    assert os.path.isfile(os.path.join(out, "config.json"))
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(out))
    text = open(os.path.join(out, "log.txt")).read()
    assert "Evaluation results for segm" in text and "AP50" in text and "Per-category segm AP" in text
    assert "copypaste: AP,AP50,AP75,APs,APm,APl" in text and "copypaste: Task: segm" in text

    solver_logged = [m["iteration"] for m in metrics if any(k.startswith("deq/") for k in m)]
    if head in ("ifr", "cascade"):  # unrolled before PRETRAINED_STEPS (= 80% of the run), implicit from then on
        switch = int(MAX_ITER * 0.8)
        assert solver_logged == list(range(switch, MAX_ITER))
        last = metrics[-1]
        assert 1 <= last["deq/mask_head.refinement/forward_iterations"] <= 15
        assert "deq/mask_head.refinement/backward_rel_residual" in last
    else:
        assert solver_logged == []


def test_resume_continues_from_the_last_checkpoint(tmp_path, monkeypatch, val_subset):
    out, metrics = _train(FOLDERS["weight_sharing"], tmp_path, monkeypatch, ["DATASETS.TEST", "()"])
    final = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)
    assert final["iteration"] == MAX_ITER - 1 and "optimizer" in final and "scheduler" in final
    os.remove(os.path.join(out, "model_final.pth"))
    with open(os.path.join(out, "last_checkpoint"), "w") as f:
        f.write(f"model_{MAX_ITER // 2:07d}.pth")
    monkeypatch.setenv("IFR_OUTPUT_ROOT", str(tmp_path))
    quickstart.main(["--experiment", os.path.join(ROOT, FOLDERS["weight_sharing"]), "--max-iter", str(MAX_ITER),
                     "--resume", "--no-progress", *TINY, "DATASETS.TEST", "()"])
    lines = [json.loads(line) for line in open(os.path.join(out, "metrics.json"))]
    # the records of the iterations redone are replaced: one per iteration
    assert [m["iteration"] for m in lines] == list(range(MAX_ITER))
    assert lines[:MAX_ITER // 2] == metrics[:MAX_ITER // 2]
    # the learning rate continues the schedule (restored scheduler), not a fresh warm-up
    assert lines[MAX_ITER // 2]["lr"] == pytest.approx(metrics[MAX_ITER // 2]["lr"])


def test_checkpoint_errors_are_clear(tmp_path):
    model = torch.nn.Linear(2, 2)
    with pytest.raises(CheckpointError, match="does not exist"):
        Checkpointer(model, str(tmp_path)).load(str(tmp_path / "nope.pth"))
    torch.save({"model": {"other.weight": torch.zeros(2, 2)}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="shares no parameter names"):
        Checkpointer(model, str(tmp_path)).load(str(tmp_path / "other.pth"))
    (tmp_path / "garbage.pth").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        Checkpointer(model, str(tmp_path)).load(str(tmp_path / "garbage.pth"))
    with pytest.raises(CheckpointError, match="never downloaded"):
        Checkpointer(model, str(tmp_path)).load("detectron2://ImageNetPretrained/MSRA/R-50.pkl")


def _cli(main, folder, args, tmp_path, monkeypatch, capsys):
    """Runs a console entry point inside a copy of an experiment folder (the run links `log` there)."""
    copy = tmp_path / folder
    shutil.copytree(os.path.join(ROOT, folder), copy)
    monkeypatch.chdir(copy)
    monkeypatch.delenv("IFR_OUTPUT_ROOT", raising=False)
    with pytest.raises(SystemExit) as info:
        main(args)
    return info.value.code, capsys.readouterr().err


def test_cli_rejects_unknown_key_and_wrong_type(monkeypatch, capsys, tmp_path):
    code, err = _cli(train_net.main, FOLDERS["ifr"], ["MODEL.ROI_MASK_HEAD.F_THRESH", "30"], tmp_path / "a",
                     monkeypatch, capsys)
    assert code == 2 and "MODEL.ROI_MASK_HEAD.F_THRESH" in err and "MODEL.ROI_MASK_HEAD.F_THRES" in err
    assert "Traceback" not in err
    code, err = _cli(train_net.main, FOLDERS["ifr"], ["MODEL.ROI_MASK_HEAD.F_THRES", "'many'"], tmp_path / "b",
                     monkeypatch, capsys)
    assert code == 2 and "F_THRES" in err and "int" in err


def test_cli_missing_dataset_is_one_clear_error(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("IFR_DATASETS", str(tmp_path / "nowhere"))
    torch.save({"model": {}}, tmp_path / "ckpt.pth")
    code, err = _cli(test_net.main, FOLDERS["ifr"], ["MODEL.WEIGHTS", str(tmp_path / "ckpt.pth"), "MODEL.DEVICE", "cpu"],
                     tmp_path, monkeypatch, capsys)
    assert code == 2 and "Traceback" not in err
    assert os.path.join(str(tmp_path / "nowhere"), "coco", "annotations", "instances_val2017.json") in err
    assert "IFR_DATASETS" in err and err.count("\n") == 1


def test_cli_outside_an_experiment_folder(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        train_net.main([])
    assert info.value.code == 2 and "not an experiment folder" in capsys.readouterr().err
