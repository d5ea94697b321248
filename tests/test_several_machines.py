"""Several machines, emulated on this one over loopback: two launcher invocations (--num-machines 2
--machine-rank 0/1 --dist-url tcp://127.0.0.1:PORT), two torchrun nodes (static rendezvous) and two
srun tasks (SLURM's environment), each a 2-iteration run of the small model on the CPU; the two ranks
train the same weights and rank 0 alone writes the run's files. A machine that never joins ends with
one message within --join-timeout; SLURM's node lists and launcher flags that cannot work are refused."""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch

from ifr.engine.defaults import check_resumed_together, default_argument_parser
from ifr.engine.launch import check_launch_arguments
from ifr.engine.rendezvous import JoinError, join_tcp_store, tcp_address
from ifr.engine.slurm import expand_nodelist, slurm_task
from ifr.errors import UserError
from ifr.presets import small_model_overrides
from ifr.tools import train_net
from ifr.tools.config_reference import config_leaves
from ifr.utils import comm

from helpers import FOLDERS, ROOT, TINY
from rank_weights import RANK_WEIGHTS

TESTS = os.path.dirname(os.path.abspath(__file__))
RANK_WEIGHTS_SCRIPT = os.path.join(TESTS, "rank_weights.py")
# Files a run writes; on machine 1 (its own OUTPUT_DIR, as on its own disk) none may appear.
RUN_FILES = ("last_checkpoint", "metrics.json", "log.txt", "config.json")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _overrides(output_dir) -> list[str]:
    """2 iterations of the small model (2 images per process, the world of 2 its reference: no
    rescaling), a checkpoint after each, no evaluation."""
    preset = small_model_overrides(max_iter=2, num_workers=0)
    pairs = [x for key, value in config_leaves(preset) for x in (key, repr(value))]
    return [*pairs, *TINY, "DATASETS.TEST", "()", "SOLVER.IMS_PER_BATCH", "4", "SOLVER.IMS_PER_DEVICE", "2",
            "SOLVER.CHECKPOINT_PERIOD", "1", "OUTPUT_DIR", str(output_dir)]


@pytest.fixture
def folder(tmp_path, datasets_root):
    from ifr.data import get_dataset_dicts

    get_dataset_dicts("synthetic_shapes_train")  # generated once here, not by both processes at once
    copy = tmp_path / FOLDERS["ifr"]
    shutil.copytree(os.path.join(ROOT, FOLDERS["ifr"]), copy)
    return copy


def _run_pair(commands: list[list[str]], cwd, envs: list[dict], weights_dir) -> None:
    """Starts the two machines' commands at once; both must succeed within the limit."""
    os.makedirs(weights_dir, exist_ok=True)
    base = {**os.environ, "OMP_NUM_THREADS": "1", RANK_WEIGHTS: str(weights_dir),
            "PYTHONPATH": os.pathsep.join(filter(None, [TESTS, os.environ.get("PYTHONPATH")]))}
    processes = [subprocess.Popen(command, cwd=cwd, env={**base, **env}, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for command, env in zip(commands, envs)]
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=240)[0])
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for machine, (process, output) in enumerate(zip(processes, outputs)):
        assert process.returncode == 0, f"machine {machine} failed:\n{output[-3000:]}"


def _check_one_model_trained_and_rank_0_wrote(out0, out1, weights_dir) -> None:
    rank0, rank1 = torch.load(weights_dir / "rank0.pth"), torch.load(weights_dir / "rank1.pth")
    final = torch.load(out0 / "model_final.pth")
    assert rank0.keys() == rank1.keys() == final["model"].keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
        assert torch.equal(rank0[key], final["model"][key]), key
    metrics = [json.loads(line) for line in open(out0 / "metrics.json")]
    assert [m["iteration"] for m in metrics if "total_loss" in m] == [0, 1]
    assert sorted(f for f in os.listdir(out0) if f.endswith(".pth")) == ["model_0000001.pth", "model_final.pth"]
    assert all(os.path.isfile(out0 / name) for name in RUN_FILES)
    written_by_rank_1 = [f for f in os.listdir(out1) if f.endswith(".pth") or f in RUN_FILES] \
        if os.path.isdir(out1) else []
    assert written_by_rank_1 == []


def test_two_launcher_invocations_train_one_model(folder, tmp_path):
    url = f"tcp://127.0.0.1:{_free_port()}"
    commands = [[sys.executable, RANK_WEIGHTS_SCRIPT, "--num-machines", "2", "--machine-rank", str(rank),
                 "--dist-url", url, "--join-timeout", "120", *_overrides(tmp_path / f"out{rank}")]
                for rank in (0, 1)]
    _run_pair(commands, folder, [{}, {}], tmp_path / "weights")
    _check_one_model_trained_and_rank_0_wrote(tmp_path / "out0", tmp_path / "out1", tmp_path / "weights")


def test_two_torchrun_nodes_train_one_model(folder, tmp_path):
    port = str(_free_port())
    commands = [[sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(rank),
                 "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", port,
                 RANK_WEIGHTS_SCRIPT, *_overrides(tmp_path / f"out{rank}")] for rank in (0, 1)]
    _run_pair(commands, folder, [{}, {}], tmp_path / "weights")
    _check_one_model_trained_and_rank_0_wrote(tmp_path / "out0", tmp_path / "out1", tmp_path / "weights")


def test_two_srun_tasks_train_one_model(folder, tmp_path):
    """What `srun --nodes 2 --ntasks-per-node 1 pods_train --slurm` gives each task; machine 0 is the
    first host of the compressed node list (127.0.0.1 here)."""
    slurm = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "2", "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "127.0.0.[1-2]",
             "MASTER_PORT": str(_free_port())}
    envs = [{**slurm, "SLURM_PROCID": str(rank), "SLURM_NODEID": str(rank), "SLURM_LOCALID": "0"} for rank in (0, 1)]
    commands = [[sys.executable, RANK_WEIGHTS_SCRIPT, "--slurm", "--join-timeout", "120",
                 *_overrides(tmp_path / f"out{rank}")] for rank in (0, 1)]
    _run_pair(commands, folder, envs, tmp_path / "weights")
    _check_one_model_trained_and_rank_0_wrote(tmp_path / "out0", tmp_path / "out1", tmp_path / "weights")


@pytest.mark.parametrize("machine_rank, message", [
    (0, r"machine rank 1 of 2 \(process 1 of 2\) did not join tcp://127.0.0.1:\d+ within 2 s: start the same "
        r"command on every machine with its --machine-rank"),
    (1, r"machine 0 was not reached at tcp://127.0.0.1:\d+ within 2 s \(.*\): start the same command")])
def test_a_machine_that_never_joins_ends_the_job_with_one_message(machine_rank, message, tmp_path, monkeypatch,
                                                                   capsys):
    monkeypatch.chdir(os.path.join(ROOT, FOLDERS["ifr"]))
    start = time.monotonic()
    with pytest.raises(SystemExit) as info:
        train_net.main(["--num-machines", "2", "--machine-rank", str(machine_rank), "--dist-url",
                        f"tcp://127.0.0.1:{_free_port()}", "--join-timeout", "2", *_overrides(tmp_path / "out")])
    assert info.value.code == 2 and time.monotonic() - start < 30
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("ERROR: "), err
    assert re.search(message, err), err
    assert not os.path.exists(tmp_path / "out")  # nothing started


@pytest.mark.parametrize("flags, message", [
    (dict(num_machines=2, machine_rank=2, dist_url="tcp://10.0.0.1:29500"), "--machine-rank 2 with --num-machines 2"),
    (dict(num_machines=2, machine_rank=-1, dist_url="tcp://10.0.0.1:29500"), "machine ranks run from 0 to 1"),
    (dict(num_machines=2), "--dist-url auto works on one machine only"),
    (dict(num_machines=2, dist_url="10.0.0.1:29500"), "is not tcp://HOST:PORT"),
    (dict(num_machines=2, dist_url="tcp://10.0.0.1"), "is not tcp://HOST:PORT"),
    (dict(num_machines=2, dist_url="tcp://10.0.0.1:70000"), "is not tcp://HOST:PORT"),
    (dict(num_machines=2, dist_url="env://"), "not set: start the command with torchrun"),
    (dict(num_machines=0), "must be >= 1"),
    (dict(join_timeout_s=0), "--join-timeout 0"),
    (dict(slurm=True, num_per_machine=8), "--slurm takes the processes and machines from srun"),
])
def test_launcher_flags_that_cannot_work_are_refused_before_anything_starts(flags, message, monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    arguments = {**dict(num_per_machine=1, num_machines=1, machine_rank=0, dist_url="auto"), **flags}
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("+", r"\+")):
        check_launch_arguments(**arguments)


@pytest.mark.parametrize("url, address", [("tcp://10.0.0.1:29500", ("10.0.0.1", 29500)),
                                          ("tcp://node01.cluster:1234", ("node01.cluster", 1234)),
                                          ("tcp://[fe80::1]:29500", ("fe80::1", 29500))])
def test_tcp_dist_urls_name_machine_0(url, address):
    check_launch_arguments(8, 2, 1, url)
    assert tcp_address(url) == address


@pytest.mark.parametrize("nodelist, hosts", [
    ("node01", ["node01"]),
    ("node[01-03,07]", ["node01", "node02", "node03", "node07"]),
    ("n[8-11]", ["n8", "n9", "n10", "n11"]),
    ("gpu-a[1-2],gpu-b3", ["gpu-a1", "gpu-a2", "gpu-b3"]),
    ("rack[1-2]-node[08,10]", ["rack1-node08", "rack1-node10", "rack2-node08", "rack2-node10"]),
    ("127.0.0.[1-2]", ["127.0.0.1", "127.0.0.2"]),
    ("a,b[09-10],c", ["a", "b09", "b10", "c"]),
])
def test_slurm_node_lists_expand_as_scontrol_does(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


@pytest.mark.parametrize("nodelist", ["node[01-03", "node[1-x]", "node[3-1]", "a,,b", "node[1]]"])
def test_malformed_node_lists_are_refused(nodelist):
    with pytest.raises(ValueError):
        expand_nodelist(nodelist)


def test_the_sbatch_example_runs_pods_train_under_srun_with_flags_it_has():
    script = os.path.join(ROOT, "scripts", "slurm_train.sbatch")
    assert subprocess.run(["bash", "-n", script]).returncode == 0
    lines = open(script).read().splitlines()
    assert {"#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=8", "#SBATCH --gres=gpu:8",
            "#SBATCH --requeue"} <= set(lines)
    srun = next(line.split() for line in lines if line.startswith("srun "))
    flags = srun[srun.index("pods_train.sh") + 1:-1]
    assert flags == ["--slurm", "--resume"]
    args = default_argument_parser("pods_train").parse_args(flags)  # an unknown flag would exit here
    assert args.slurm and args.resume


SRUN_TASK_9 = {"SLURM_PROCID": "9", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1", "SLURM_NODEID": "1",
               "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "123456"}


def test_an_srun_task_finds_its_rank_and_machine_0():
    task = slurm_task(SRUN_TASK_9)
    assert (task.rank, task.world_size, task.local_rank, task.machine_rank, task.num_machines) == (9, 16, 1, 1, 2)
    assert task.dist_url == f"tcp://gpu07:{10000 + 123456 % 20000}"  # the same for every task of the job
    assert slurm_task({**SRUN_TASK_9, "SLURM_STEP_NODELIST": "gpu08"}).dist_url.startswith("tcp://gpu08:")
    assert slurm_task({**SRUN_TASK_9, "MASTER_ADDR": "10.1.1.7", "MASTER_PORT": "29500"}).dist_url == \
        "tcp://10.1.1.7:29500"


def test_slurm_without_srun_is_one_clear_error():
    with pytest.raises(UserError, match="--slurm: SLURM_PROCID is not set: run the command under srun"):
        slurm_task({key: value for key, value in SRUN_TASK_9.items() if key != "SLURM_PROCID"})
    with pytest.raises(UserError, match="node list 'gpu\\[07-' cannot be read.*set MASTER_ADDR"):
        slurm_task({**SRUN_TASK_9, "SLURM_JOB_NODELIST": "gpu[07-"})


def test_machines_that_resume_from_different_checkpoints_stop_with_one_message(monkeypatch):
    """Machine 1 sees no checkpoint in its OUTPUT_DIR (not a shared folder) and would start over."""
    monkeypatch.setattr(comm, "all_gather", lambda item: [item, item, 0, 0])
    with pytest.raises(UserError, match=r"process 0 continues at iteration 4 and process 2, 3 at 0: the machines do "
                                        r"not see the same checkpoints in /out; put OUTPUT_DIR on a filesystem"):
        check_resumed_together(4, "/out")
    monkeypatch.setattr(comm, "all_gather", lambda item: [item, item])
    check_resumed_together(4, "/out")


def test_the_machines_that_did_not_join_are_named():
    """3 machines x 2 processes; machine 2 never starts: the processes that came name it."""
    url = f"tcp://127.0.0.1:{_free_port()}"
    errors = {}

    def join(rank):
        try:
            join_tcp_store(url, rank, 6, 2, 2.0, "start it")
        except JoinError as e:
            errors[rank] = str(e)

    threads = [threading.Thread(target=join, args=(rank,)) for rank in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors[0] == f"machine rank 2 of 3 (process 4-5 of 6) did not join {url} within 2 s: start it"
    assert set(errors) == {0, 1, 2, 3}  # each ends: with the same message, or told that process 0 stopped


def test_a_port_in_use_on_machine_0_is_one_clear_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        url = f"tcp://127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(JoinError, match=f"process 0 cannot serve {url} on this machine .*address already in use.*"
                                            "the port is taken.*pass --dist-url with machine 0's address and a free "
                                            "port"):
            join_tcp_store(url, 0, 2, 1, 2.0, "")
