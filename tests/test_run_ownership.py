"""One run, one owner; nothing left half-done (issue 29, findings 5, 6 and 9).

A run folder is claimed by the command that writes it (two real processes: one holds, the other is
refused naming it; a killed owner's lock is taken over), evaluations never rewrite the training's
config.json, leftover temporary files are removed by the folder's owner, and an evaluation's result
files switch as one set whatever step of the commit is interrupted."""
import json
import logging
import os
import shutil
import socket
import subprocess
import sys

import pytest

from ifr.utils import atomic
from ifr.utils.atomic import StagedFiles, remove_leftover_temporaries, write_atomically
from ifr.utils.run_lock import LOCK_NAME, RunFolderBusy, claim_run_folder, launches_the_job

from helpers import FOLDERS, ROOT, TINY, holding_run_folder


@pytest.fixture
def lock_log(caplog):
    """The run lock's log lines (the ``ifr`` logger does not propagate to pytest's handler)."""
    logger = logging.getLogger("ifr.utils.run_lock")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="ifr.utils.run_lock")
    yield caplog
    logger.removeHandler(caplog.handler)


def _experiment(tmp_path, monkeypatch):
    copy = tmp_path / "experiment"
    shutil.copytree(os.path.join(ROOT, FOLDERS["ifr"]), copy)
    monkeypatch.chdir(copy)


def _refusal(capsys, main, argv) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err.strip()


def test_a_second_command_is_refused_naming_the_owner_and_a_killed_owners_lock_is_taken_over(
        tmp_path, monkeypatch, capsys, lock_log):
    from ifr.tools import test_net, train_net

    run = tmp_path / "run"
    with holding_run_folder(tmp_path, run) as holder:
        _experiment(tmp_path, monkeypatch)
        for main, argv in [(train_net.main, []), (train_net.main, ["--resume"]), (test_net.main, ["MODEL.WEIGHTS", ""])]:
            err = _refusal(capsys, main, [*argv, *TINY, "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(run)])
            assert err.startswith(f"ERROR: OUTPUT_DIR {run} is in use by hold_run_folder.py {run} (pid {holder.pid} on "
                                  f"{socket.gethostname()}, started "), err
            assert "wait for it to end or stop it" in err and len(err.splitlines()) == 1
        assert "MODEL.WEIGHTS <checkpoint> OUTPUT_DIR <folder>" in err  # pods_test: how to evaluate meanwhile
        assert sorted(os.listdir(run)) == [LOCK_NAME]  # the refused commands wrote nothing there
        holder.kill()  # SIGKILL: no clean-up, the lock file stays behind
    assert json.loads((run / LOCK_NAME).read_text())["pid"] == holder.pid
    with claim_run_folder(str(run)):
        assert json.loads((run / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert f"was left by hold_run_folder.py {run} (pid {holder.pid}" in lock_log.text and "no longer runs" in lock_log.text
    assert not (run / LOCK_NAME).exists()  # released on exit


def test_a_lock_of_a_dead_process_is_taken_over_and_another_hosts_lock_says_how_to_remove_it(tmp_path, lock_log):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    owner = {"host": socket.gethostname(), "pid": dead.pid, "started": "2026-12-05 10:00:00 UTC", "command": "pods_train"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(owner))
    with claim_run_folder(str(tmp_path)):
        pass
    assert f"(pid {dead.pid} on {socket.gethostname()}, started 2026-12-05 10:00:00 UTC)" in lock_log.text
    (tmp_path / LOCK_NAME).write_text(json.dumps({**owner, "host": "node-17"}))
    with pytest.raises(RunFolderBusy) as info:
        with claim_run_folder(str(tmp_path)):
            pass
    message = str(info.value)
    assert "pods_train (pid" in message and "node-17" in message and "another machine" in message
    assert f"remove {tmp_path / LOCK_NAME}" in message and len(message.splitlines()) == 1
    assert json.loads((tmp_path / LOCK_NAME).read_text())["host"] == "node-17"  # a refusal leaves it as it was


def test_a_requeued_slurm_job_takes_over_its_own_lock_from_another_node(tmp_path, monkeypatch, lock_log):
    """A preempted SLURM job is requeued with the same SLURM_JOB_ID, a higher SLURM_RESTART_COUNT, often on
    another node: its --resume takes over the lock its earlier run left; another job's lock still refuses."""
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    earlier = {"host": "node-17", "pid": 12345, "started": "2026-12-05 10:00:00 UTC", "command": "pods_train",
               "slurm_job_id": "4242", "slurm_restart_count": "0"}
    for owner, taken in [(earlier, True), ({**earlier, "slurm_job_id": "4243"}, False),
                         ({**earlier, "slurm_restart_count": "1"}, False), ({**earlier, "slurm_job_id": None}, False)]:
        (tmp_path / LOCK_NAME).write_text(json.dumps(owner))
        if taken:
            with claim_run_folder(str(tmp_path)):
                mine = json.loads((tmp_path / LOCK_NAME).read_text())
                assert (mine["slurm_job_id"], mine["slurm_restart_count"]) == ("4242", "1")
            assert "this SLURM job before it was requeued" in lock_log.text
        else:
            with pytest.raises(RunFolderBusy, match="another machine"):
                with claim_run_folder(str(tmp_path)):
                    pass


def test_only_task_zero_of_an_srun_step_claims_the_folder(monkeypatch):
    monkeypatch.setenv("RANK", "3")  # set by some site profiles under srun: --slurm reads SLURM_PROCID
    monkeypatch.setenv("WORLD_SIZE", "16")
    for procid, claims in [("0", True), ("1", False), ("8", False)]:
        monkeypatch.setenv("SLURM_PROCID", procid)
        assert launches_the_job(0, slurm=True) is claims


def test_the_owner_removes_temporaries_of_killed_writes_and_says_so(tmp_path, monkeypatch, lock_log):
    def killed(path):
        with open(path, "w") as f:
            f.write("half")
        raise KeyboardInterrupt  # a kill that skips the clean-up leaves the temporary file: simulated below

    monkeypatch.setattr(atomic, "_remove", lambda path: None)  # the kill: no clean-up runs
    for name in ("metrics.json", "model_0000019.pth", os.path.join("inference", "coco_eval_results.json")):
        with pytest.raises(KeyboardInterrupt):
            write_atomically(str(tmp_path / name), killed)
    monkeypatch.undo()
    (tmp_path / "notes.tmp.txt").write_text("a user's file")  # not one of atomic's names: kept
    (tmp_path / ".hidden.tmp").write_text("also kept")
    deep = os.path.join("a", "b", ".x.abcdefgh.tmp.json")  # deeper than the run folder's own subfolders: kept
    os.makedirs(tmp_path / "a" / "b")
    (tmp_path / deep).write_text("someone else's")
    with holding_run_folder(tmp_path, tmp_path / "demo"):  # a demo drawing into OUTPUT_DIR/demo meanwhile
        (tmp_path / "demo" / ".x.png.abcdefgh.tmp").write_text("the demo's live write")
        with claim_run_folder(str(tmp_path)):
            left = sorted(os.path.relpath(os.path.join(r, n), tmp_path) for r, _, files in os.walk(tmp_path)
                          for n in files)
    demo_files = [os.path.join("demo", LOCK_NAME), os.path.join("demo", ".x.png.abcdefgh.tmp")]
    assert left == sorted([".hidden.tmp", LOCK_NAME, "notes.tmp.txt", deep, *demo_files, "hold_run_folder.py"])
    assert "removed 3 temporary file(s) left in" in lock_log.text and ".model_0000019." in lock_log.text


def test_evaluations_never_rewrite_the_trainings_config_record(tmp_path, monkeypatch, capsys, val_subset):
    from ifr.tools import quickstart, test_net

    monkeypatch.setenv("IFR_OUTPUT_ROOT", str(tmp_path))
    run = tmp_path / "quickstart"
    run.mkdir()
    recorded = b'{"what": "the training of this folder"}'
    (run / "config.json").write_bytes(recorded)
    evaluated = []  # (the evaluation itself writes no config: minutes of CPU spared)
    monkeypatch.setattr(quickstart, "evaluate", lambda cfg, model, **kwargs: evaluated.append(cfg.OUTPUT_DIR))
    quickstart.main(["--max-iter", "0", "--no-progress", *TINY])  # evaluates (the untrained model): its own record
    assert evaluated == [str(run)]
    assert json.loads((run / "config_evaluation.json").read_text())["DATASETS"]["TEST"] == [val_subset]
    _experiment(tmp_path, monkeypatch)
    err = _refusal(capsys, test_net.main, ["MODEL.WEIGHTS", "", *TINY, "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(run),
                                           "MODEL.ROI_HEADS.NUM_CLASSES", "3"])
    assert err.startswith("ERROR: no checkpoints model_*.pth in")  # refused after its set-up
    assert (run / "config.json").read_bytes() == recorded


# ---- an evaluation's files switch as one set, whatever step of the commit is interrupted ----

class _Interrupted(BaseException):
    pass


def _visible(folder, names) -> dict:
    return {n: open(os.path.join(folder, n)).read() for n in names if os.path.isfile(os.path.join(folder, n))}


def _commit_steps(monkeypatch, fail_at: int | None) -> list:
    """Counts the file-system operations of a commit; raises at the ``fail_at``-th."""
    steps = []
    for module, name in [(os, "replace"), (os, "symlink"), (os, "link"), (shutil, "rmtree")]:
        original = getattr(module, name)

        def step(*args, _original=original, _name=name, **kwargs):
            if len(steps) == fail_at:
                raise _Interrupted(_name)
            steps.append(_name)
            return _original(*args, **kwargs)
        monkeypatch.setattr(module, name, step)
    return steps


@pytest.mark.parametrize("layout", ["sets", "plain files"])  # "plain files": written before this layout
def test_a_commit_interrupted_at_any_step_leaves_the_old_set_or_the_new_one(tmp_path, monkeypatch, layout):
    names = ("instances_predictions.pth", "coco_instances_results.json", "coco_eval_results.json")
    old = {n: f"old {n}" for n in names}
    new = {n: f"new {n}" for n in names[:2]}  # the new set lacks a file: it must not stay from the old one

    def prepare(folder):
        if layout == "plain files":
            for n in names:
                (folder / n).write_text(old[n])
            return
        with StagedFiles(str(folder), names) as files:
            for n in names:
                files.stage(n, lambda p, n=n: open(p, "w").write(old[n]))

    def commit(folder):
        files = StagedFiles(str(folder), names)
        for n in new:
            files.stage(n, lambda p, n=n: open(p, "w").write(new[n]))
        files.commit()

    reference = tmp_path / "reference"
    reference.mkdir()
    prepare(reference)
    with monkeypatch.context() as m:
        steps = _commit_steps(m, None)
        commit(reference)
    count = len(steps)
    assert count >= 3 and _visible(reference, names) == new
    for k in range(count):
        folder = tmp_path / f"kill{k}"
        folder.mkdir()
        prepare(folder)
        with monkeypatch.context() as m:
            _commit_steps(m, k)
            with pytest.raises(_Interrupted):
                commit(folder)
        assert _visible(folder, names) in (old, new), (k, _visible(folder, names))
        commit(folder)  # the next evaluation after the kill completes, and its owner clears what was left
        remove_leftover_temporaries(str(folder))
        assert _visible(folder, names) == new
        assert [n for n in os.listdir(folder) if n.startswith(".set-")] == [os.readlink(folder / ".current_set")]
        assert not [n for n in os.listdir(folder) if ".tmp" in n]
