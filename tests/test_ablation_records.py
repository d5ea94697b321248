"""benchmarks/ablation.py reuses a finished run only when its recorded settings are the command's
(issue 24, finding 2), with fabricated results.json files instead of 800-iteration trainings."""
import importlib.util
import json
import os
import sys

import pytest
import torch

from helpers import ROOT, holding_run_folder


@pytest.fixture(scope="module")
def ablation():
    spec = importlib.util.spec_from_file_location("ablation_benchmark", os.path.join(ROOT, "benchmarks", "ablation.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fabricate(ablation, root, seed, max_iter, content=None, variant="ifr"):
    """A finished run's folder as ablation.py leaves it, recorded with ``max_iter`` iterations."""
    out = os.path.join(str(root), "shapes", variant, f"seed{seed}")
    os.makedirs(out, exist_ok=True)
    config, _ = ablation.run_config("shapes", variant, seed, max_iter, out)
    results = {"box_AP": 10.0 + seed, "mask_AP": 20.0 + max_iter / 100, "mask_AP75": 5.0, "oracle_mask_AP": 30.0,
               "mask_head_parameters": 1000, "feature_layer_parameters": 600, "seconds_per_image": 0.1,
               "solver_steps_per_image": 5.0, "solver_steps_per_roi": 1.0,
               "settings": ablation.run_settings(config, variant)}
    with open(os.path.join(out, "results.json"), "w") as f:
        f.write(json.dumps(results) if content is None else content)
    open(os.path.join(out, "metrics.json"), "w").close()
    return out


def _main(ablation, monkeypatch, capsys, *argv) -> str:
    monkeypatch.setattr(sys, "argv", ["ablation.py", *argv])
    ablation.main()
    return capsys.readouterr().out


def test_finished_only_reports_the_matching_runs_titled_from_their_records(ablation, tmp_path, monkeypatch, capsys):
    smoke = _fabricate(ablation, tmp_path, 0, 2)  # a smoke run left from --max-iter 2
    _fabricate(ablation, tmp_path, 1, 800)
    empty = _fabricate(ablation, tmp_path, 2, 800, content="")
    out = _main(ablation, monkeypatch, capsys, "--datasets", "shapes", "--heads", "ifr", "--seeds", "0", "1", "2",
                "--max-iter", "800", "--finished-only", "--output", str(tmp_path))
    threads = torch.get_num_threads()
    assert f"800 iterations per run, seeds [1], {threads} CPU thread" in out
    assert f"left out {smoke}: it ran with other settings (" in out and "SOLVER.LR_SCHEDULER.MAX_ITER 2 -> 800" in out
    assert f"left out {empty}: its results.json cannot be read (JSONDecodeError" in out
    per_seed = out.split("Per seed")[1]
    assert "| shapes    | ifr         |      1 |" in per_seed and "|      0 |" not in per_seed  # only seed 1
    # the smoke run's own command reports it, titled with its own iterations
    out = _main(ablation, monkeypatch, capsys, "--datasets", "shapes", "--heads", "ifr", "--seeds", "0",
                "--max-iter", "2", "--finished-only", "--output", str(tmp_path))
    assert out.startswith(f"2 iterations per run, seeds [0], {threads} CPU thread") and "left out" not in out


def test_other_thread_counts_and_settings_without_records_do_not_match(ablation, tmp_path, monkeypatch, capsys):
    out = _fabricate(ablation, tmp_path, 0, 800)
    config, _ = ablation.run_config("shapes", "ifr", 0, 800, out)
    wanted = ablation.run_settings(config, "ifr")
    assert ablation.reusable_results(out, wanted)[1] == "finished"
    other_threads = {**wanted, "threads": wanted["threads"] + 1}
    assert ablation.reusable_results(out, other_threads)[1].startswith("it ran with other settings (threads ")
    other_head = ablation.run_settings(ablation.run_config("shapes", "ifr_jac0.5", 0, 800, out)[0], "ifr_jac0.5")
    assert "MODEL.ROI_MASK_HEAD.JACOBIAN_WEIGHT 0.0 -> 0.5" in ablation.reusable_results(out, other_head)[1]
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"box_AP": 1.0}, f)  # an older version's record
    assert ablation.reusable_results(out, wanted)[1] == ("its results.json records no settings (written by an older "
                                                          "version)")


class _Stop(Exception):
    pass


def test_a_mismatching_or_unreadable_run_is_run_again(ablation, tmp_path, monkeypatch, capsys):
    """What happens before training: the stale run's folder is removed (its checkpoints are of other
    settings); an unreadable results.json of a run with the same config resumes it (evaluation only)."""
    def stop(config, args):
        raise _Stop(config.OUTPUT_DIR)

    monkeypatch.setattr(ablation, "default_setup", stop)
    smoke = _fabricate(ablation, tmp_path, 0, 2)
    torch.save({"model": {}}, os.path.join(smoke, "model_final.pth"))
    with pytest.raises(_Stop):
        ablation.one_run("shapes", "ifr", 0, 800, str(tmp_path))
    printed = capsys.readouterr().out
    assert f"running {smoke} again: it ran with other settings" in printed and "starting over" in printed
    assert not os.path.exists(smoke) or os.listdir(smoke) == []  # its 2-iteration checkpoints are not resumed

    unreadable = _fabricate(ablation, tmp_path, 1, 800, content="{")
    config, _ = ablation.run_config("shapes", "ifr", 1, 800, unreadable)
    config.dump(os.path.join(unreadable, "config.json"))
    torch.save({"model": {}}, os.path.join(unreadable, "model_final.pth"))
    with pytest.raises(_Stop):
        ablation.one_run("shapes", "ifr", 1, 800, str(tmp_path))
    printed = capsys.readouterr().out
    assert f"running {unreadable} again: its results.json cannot be read" in printed and "starting over" not in printed
    assert os.path.isfile(os.path.join(unreadable, "model_final.pth"))  # resumed: only the evaluation is redone


def test_a_run_another_command_is_at_work_on_is_refused_naming_it(ablation, tmp_path, monkeypatch, capsys):
    """Two ablation commands into one --output (e.g. one per dataset or detector, side by side) share no
    run; one that reaches the other's run stops in one line instead of training it a second time."""
    monkeypatch.setattr(ablation, "default_setup", lambda config, args: pytest.fail("trained a run held by another"))
    out = os.path.join(str(tmp_path), "shapes", "ifr", "seed0")
    with holding_run_folder(tmp_path, out), pytest.raises(SystemExit) as info:
        ablation.run_reporting_user_errors(lambda _: _main(ablation, monkeypatch, capsys, "--datasets", "shapes",
                                                           "--heads", "ifr", "--seeds", "0", "--output",
                                                           str(tmp_path)), None)
    error = capsys.readouterr().err.strip()
    assert info.value.code == 2 and error.startswith(f"ERROR: OUTPUT_DIR {out} is in use by ") and error.endswith(
        "let it finish (its results are then reused), or give this command another --output"), error
    assert "\n" not in error


def test_finished_only_without_any_run_says_how_to_produce_them(ablation, tmp_path, monkeypatch, capsys):
    out = _main(ablation, monkeypatch, capsys, "--datasets", "shapes", "--heads", "conv", "--seeds", "0",
                "--finished-only", "--output", str(tmp_path))
    assert "|" not in out  # no empty tables
    assert (f"no finished run in {tmp_path} matches these settings: train and evaluate them with `python "
            f"benchmarks/ablation.py --datasets shapes --heads conv --seeds 0 --output {tmp_path}`") in out


def test_each_head_is_built_by_its_experiment_folder(ablation, tmp_path):
    config, build_model = ablation.run_config("shapes", "conv", 0, 2, str(tmp_path))
    assert build_model.__code__.co_filename == os.path.join(ROOT, "mask_rcnn.res50.fpn.coco.multiscale.1x", "net.py")
    state = build_model(config).state_dict()
    assert "roi_heads.mask_head.mask_fcn4.weight" in state and "roi_heads.mask_head.mask_fcn5.weight" not in state
