"""A smoke run is one (issue 31, findings 2 and 4): ``--eval-images N`` evaluates exactly N images and
says so in the run's records; the log reads in order (the last training line, then the evaluation),
and metrics.json holds the training records while the evaluation runs."""
import json
import os

import pytest
import torch

import ifr
from ifr.engine import defaults
from ifr.presets import quickstart_output_dir
from ifr.tools import quickstart

from helpers import FOLDERS, ROOT, TINY

MAX_ITER = 4


def test_a_smoke_run_evaluates_n_images_after_its_last_training_line(tmp_path, monkeypatch, val_subset):
    folder = os.path.join(ROOT, FOLDERS["baseline"])
    monkeypatch.setenv("IFR_OUTPUT_ROOT", str(tmp_path))
    out = quickstart_output_dir(folder)
    records_during_evaluation = []

    def inference_reading_the_records(model, loader, evaluator, show_progress=True):
        with open(os.path.join(out, "metrics.json")) as f:
            records_during_evaluation.append([json.loads(line) for line in f])
        return inference(model, loader, evaluator, show_progress)

    inference = defaults.inference_on_dataset
    monkeypatch.setattr(defaults, "inference_on_dataset", inference_reading_the_records)
    quickstart.main(["--experiment", folder, "--max-iter", str(MAX_ITER), "--eval-images", "3", "--no-progress",
                     *TINY, "TEST.EXPECTED_RESULTS", "[('segm', 'AP', 99.0, 0.1)]"])

    # the evaluator saw exactly the first 3 of the 10 validation images
    predictions = torch.load(os.path.join(out, "inference", "instances_predictions.pth"), weights_only=False)
    first_three = [r["image_id"] for r in ifr.data.get_dataset_dicts(val_subset)[:3]]
    assert [p["image_id"] for p in predictions] == first_three
    log = open(os.path.join(out, "log.txt")).read().splitlines()
    assert log[0].endswith(f"ifr {ifr.__version__} from {os.path.dirname(os.path.realpath(ifr.__file__))}")
    assert any(f"TEST.MAX_IMAGES 3: evaluating the first 3 of the 10 images of {val_subset}" in line for line in log)
    # a subset cannot be checked against expected results: skipped, said in the log, the command succeeds
    assert any("TEST.EXPECTED_RESULTS not checked: TEST.MAX_IMAGES 3" in line for line in log)
    assert json.load(open(os.path.join(out, "config.json")))["TEST"]["MAX_IMAGES"] == 3

    # the log: every training line, the last one included, before the evaluation's tables
    last_training = max(i for i, line in enumerate(log) if f"iter: {MAX_ITER}/{MAX_ITER}" in line)
    first_evaluation = min(i for i, line in enumerate(log) if "Start inference on 3 images" in line)
    assert last_training < first_evaluation
    assert not any("iter: " in line and "eta: " in line for line in log[first_evaluation:])
    # metrics.json: every training record written before the evaluation started ...
    assert [[r["iteration"] for r in records] for records in records_during_evaluation] == [list(range(MAX_ITER))]
    # ... then the evaluation merged into the last iteration's record (one record per iteration)
    records = [json.loads(line) for line in open(os.path.join(out, "metrics.json"))]
    assert [r["iteration"] for r in records] == list(range(MAX_ITER))
    assert records[:-1] == records_during_evaluation[0][:-1]
    last = records[-1]
    assert last["eval/images"] == 3 and "segm/AP" in last and "bbox/AP" in last and "total_loss" in last
    assert {k: v for k, v in last.items() if "/" not in k} == records_during_evaluation[0][-1]


def test_a_run_with_nothing_left_to_train_is_still_evaluated_and_recorded(tmp_path):
    """MAX_ITER already reached (a resume of a finished run): no training line, one evaluation, its
    record in metrics.json."""
    from ifr.engine.events import EventStorage, JSONWriter
    from ifr.engine.hooks import EvalHook, PeriodicWriter

    class FinishedRun:
        start_iter = max_iter = iter = 5
        storage = EventStorage(5)

    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"iteration": 4, "total_loss": 1.0}) + "\n")
    records = JSONWriter(str(path), window=1)
    evaluations = []
    hooks = [PeriodicWriter([records], period=1),
             EvalHook(0, lambda: evaluations.append(1) or {"segm": {"AP": 12.5, "AP-square": 3.0}}, writers=[records])]
    for hook in hooks:
        hook.trainer = FinishedRun
    for hook in hooks:
        hook.before_train()
    for hook in hooks:
        hook.after_train()
    assert evaluations == [1]
    assert [json.loads(line) for line in open(path)] == [{"iteration": 4, "total_loss": 1.0},
                                                         {"iteration": 5, "segm/AP": 12.5}]


def test_a_negative_number_of_evaluation_images_is_refused_before_anything_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IFR_OUTPUT_ROOT", str(tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        quickstart.main(["--max-iter", "1", "--eval-images", "-1", "--no-progress", *TINY])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "TEST.MAX_IMAGES is -1: give the number of test images to evaluate" in err
    assert not os.path.exists(os.path.join(str(tmp_path), "quickstart", "metrics.json"))
