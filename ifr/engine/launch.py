"""Starting one process per device with torch.distributed: on one machine (``--num-gpus N``), on several
(``--num-machines/--machine-rank/--dist-url``), under torchrun (its environment variables) or under
SLURM's srun (``--slurm``: one task per device, see ``ifr.engine.slurm``).

The processes meet at machine 0's address (``ifr.engine.rendezvous``) within ``--join-timeout``
seconds; a machine that does not join ends the job with one message naming it, not a hang.

The process group follows the configured device (``MODEL.DEVICE``), not what the machine has: NCCL
for ``cuda`` (each process on the GPU of its local rank), gloo for ``cpu``, so CPU runs work on GPU
machines too. A worker that dies ends the whole job: the launcher kills the other
workers and raises, instead of leaving them waiting in a collective.
"""
from __future__ import annotations

import datetime
import logging
import os
import re
import shutil
import signal
import socket
import tempfile
import time
from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ifr.config import ConfigError
from ifr.errors import UserError
from ifr.utils import comm
from ifr.utils.atomic import open_atomically

from .rendezvous import DEFAULT_JOIN_TIMEOUT_S, check_dist_url, join_tcp_store
from .slurm import slurm_task

logger = logging.getLogger(__name__)


class WorkerError(UserError):
    """A worker process of a multi-process job failed or died."""


# How long a collective may wait for a slow peer before the job fails instead of hanging forever.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def started_by_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"))


def check_device_name(device: str) -> None:
    """``MODEL.DEVICE`` must be cpu, cuda or cuda:N."""
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise ConfigError(f"MODEL.DEVICE {device!r} is not a device this project runs on: use cuda, cuda:N or cpu")


def process_device(device: str, num_per_machine: int) -> str:
    """The device type the processes of a job run on, from ``MODEL.DEVICE`` (``cpu``, ``cuda`` or
    ``cuda:N``): "cuda" or "cpu". A CUDA device on a machine without one falls back to the CPU, as a
    single process does. ``cuda:N`` names one GPU, so it is refused for several processes per
    machine: each process takes the GPU of its local rank."""
    check_device_name(device)
    if device == "cpu" or not torch.cuda.is_available():
        return "cpu"
    if device != "cuda" and num_per_machine > 1:
        raise ConfigError(f"MODEL.DEVICE {device} names one GPU but --num-gpus {num_per_machine} starts "
                          f"{num_per_machine} processes: use MODEL.DEVICE cuda (process i uses GPU i)")
    return "cuda"


def _backend(device_type: str) -> str:
    return "nccl" if device_type == "cuda" else "gloo"


@dataclass(frozen=True)
class _Member:
    """One process of a job: where it stands in the group and how it meets the others."""
    rank: int
    world_size: int
    local_rank: int
    num_per_machine: int
    init_method: str  # tcp://HOST:PORT (the rendezvous here) or env:// (torchrun's)
    device_type: str
    join_timeout_s: float = DEFAULT_JOIN_TIMEOUT_S
    join_advice: str = ""


def _init(member: _Member) -> None:
    if member.device_type == "cuda":
        if member.local_rank >= torch.cuda.device_count():
            raise UserError(f"process {member.local_rank} of this machine needs GPU {member.local_rank} and the "
                            f"machine shows {torch.cuda.device_count()}: start fewer processes per machine (--num-gpus, "
                            "srun --ntasks-per-node), or run on the CPU (MODEL.DEVICE cpu)")
        torch.cuda.set_device(member.local_rank)
    backend = _backend(member.device_type)
    if member.init_method == "env://":
        dist.init_process_group(backend, init_method="env://", world_size=member.world_size, rank=member.rank,
                                timeout=COLLECTIVE_TIMEOUT)
    else:
        store = join_tcp_store(member.init_method, member.rank, member.world_size, member.num_per_machine,
                               member.join_timeout_s, member.join_advice)
        store.set_timeout(COLLECTIVE_TIMEOUT)  # everyone is here: from now on a wait is a slow collective
        dist.init_process_group(backend, store=store, world_size=member.world_size, rank=member.rank,
                                timeout=COLLECTIVE_TIMEOUT)
    comm.synchronize()


def _record_failure(error_dir: str, rank: int, error: BaseException) -> None:
    # With the time, so the launcher can tell the first failure from its consequences (peers failing
    # in a collective once this process is gone). Written before the process group is torn down.
    with open_atomically(os.path.join(error_dir, f"rank{rank}.txt")) as f:  # whole, even if terminated meanwhile
        f.write(f"{time.time()}\n{error}")


def _run_in_group(member: _Member, main: Callable, args: tuple, error_dir: str | None = None) -> None:
    """Joins the process group, runs ``main(*args)`` and leaves the group; a failure is recorded in
    ``error_dir`` (the ``except`` runs before the ``finally``, so before the group is torn down)."""
    try:
        _init(member)
        main(*args)
        # A process that is done (rank 1 while rank 0 scores the evaluation) does not tear the group
        # down under a peer still using it.
        comm.synchronize()
    except BaseException as e:
        if error_dir is not None:
            _record_failure(error_dir, member.rank, e)
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _worker(local_rank: int, main: Callable, args: tuple, machine: _Member, error_dir: str) -> None:
    """A spawned process: ``machine`` is the machine's first process, this one is ``local_rank`` after it."""
    _run_in_group(replace(machine, rank=machine.rank + local_rank, local_rank=local_rank), main, args, error_dir)


def _first_failure(context, error_dir: str, machine_rank: int, num_per_machine: int) -> str:
    """The root cause among the workers: one that died without a Python error (killed, out of
    memory), else the earliest recorded error."""
    errors = {}
    for name in [n for n in os.listdir(error_dir) if n.startswith("rank") and n.endswith(".txt")]:
        with open(os.path.join(error_dir, name)) as f:
            stamp, message = f.read().split("\n", 1)
        errors[int(name[len("rank"):-len(".txt")])] = (float(stamp), message.strip())
    for local_rank, process in enumerate(context.processes):
        rank = machine_rank * num_per_machine + local_rank
        # (-SIGTERM: terminated by the launcher after another worker failed, not a cause)
        if process.exitcode not in (0, None, -signal.SIGTERM) and rank not in errors:
            return (f"worker process {rank} died (exit code {process.exitcode}), the job is stopped; checkpoints "
                    "written so far are kept: continue with --resume")
    if not errors:
        return "a worker process failed, the job is stopped"
    rank, (_, message) = min(errors.items(), key=lambda item: item[1][0])
    return f"worker process {rank} failed, the job is stopped: {message}"


def check_launch_arguments(num_per_machine: int, num_machines: int, machine_rank: int, dist_url: str,
                           join_timeout_s: float = DEFAULT_JOIN_TIMEOUT_S, slurm: bool = False) -> None:
    """The launcher flags, refused in one line before anything starts."""
    if num_per_machine < 1 or num_machines < 1:
        raise UserError(f"--num-gpus ({num_per_machine}) and --num-machines ({num_machines}) must be >= 1")
    if not 0 <= machine_rank < num_machines:
        raise UserError(f"--machine-rank {machine_rank} with --num-machines {num_machines}: machine ranks run from 0 "
                        f"to {num_machines - 1} (0 on the machine --dist-url names)")
    check_dist_url(dist_url)
    if dist_url == "auto" and num_machines > 1 and not started_by_torchrun():
        raise UserError("--dist-url auto works on one machine only: pass --dist-url tcp://<machine 0>:<port>, the same "
                        "on every machine")
    if dist_url == "env://" and not started_by_torchrun():
        raise UserError("--dist-url env:// takes the ranks from torchrun's environment (RANK, WORLD_SIZE, ...), which "
                        "is not set: start the command with torchrun, or pass --dist-url tcp://<machine 0>:<port>")
    if not join_timeout_s > 0:
        raise UserError(f"--join-timeout {join_timeout_s:g}: the seconds to wait for the other machines must be > 0")
    if slurm and (num_per_machine, num_machines, machine_rank, dist_url) != (1, 1, 0, "auto"):
        raise UserError("--slurm takes the processes and machines from srun (one task per GPU): drop --num-gpus, "
                        "--num-machines, --machine-rank and --dist-url, and set srun --ntasks-per-node instead")
    if slurm and started_by_torchrun():
        raise UserError("--slurm under torchrun: srun starts one process per GPU itself; run pods_train --slurm "
                        "under srun, or torchrun without --slurm")


def launch(main: Callable, num_per_machine: int, num_machines: int = 1, machine_rank: int = 0,
           dist_url: str = "auto", args: tuple = (), *, device: str, join_timeout_s: float = DEFAULT_JOIN_TIMEOUT_S,
           slurm: bool = False) -> None:
    """Runs ``main(*args)`` in ``num_per_machine * num_machines`` processes (in this one if that is 1).

    ``dist_url``: ``tcp://HOST:PORT`` of machine 0, or "auto" (a free local port; one machine only).
    ``device``: the configured device (``MODEL.DEVICE``: cpu, cuda or cuda:N); it chooses the process
    group's backend and whether each process binds a GPU (see ``process_device``).
    ``join_timeout_s``: how long the processes wait for each other at the start before the job ends
    naming the machines that did not join. ``slurm``: this process is one task of an srun step, which
    gives its rank and machine 0's address (``ifr.engine.slurm``); under torchrun, torchrun's
    environment does.
    """
    check_launch_arguments(num_per_machine, num_machines, machine_rank, dist_url, join_timeout_s, slurm)
    if slurm:
        task = slurm_task(os.environ)
        per_machine = task.world_size // task.num_machines if task.world_size % task.num_machines == 0 else 1
        advice = (f"check that srun started every task (the job's nodes, --ntasks-per-node) and that the other "
                  f"machines reach machine 0 at {task.dist_url} (set MASTER_ADDR / MASTER_PORT otherwise); "
                  "--join-timeout sets this limit")
        _run_in_group(_Member(task.rank, task.world_size, task.local_rank, per_machine, task.dist_url,
                              process_device(device, per_machine), join_timeout_s, advice), main, args)
        return
    if started_by_torchrun():
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
        _run_in_group(_Member(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]),
                              local_world, "env://", process_device(device, local_world)), main, args)
        return
    world_size = num_per_machine * num_machines
    device_type = process_device(device, num_per_machine)
    if world_size == 1:
        main(*args)
        return
    if dist_url == "auto":
        dist_url = f"tcp://127.0.0.1:{_free_port()}"
    advice = (f"start the same command on every machine with its --machine-rank (0 to {num_machines - 1}), and check "
              f"that {dist_url} is machine 0's address as the others reach it and that no firewall blocks the port; "
              "--join-timeout sets this limit")
    machine = _Member(machine_rank * num_per_machine, world_size, 0, num_per_machine, dist_url, device_type,
                      join_timeout_s, advice)
    if num_per_machine == 1:  # this machine's one process: no need to spawn it
        _run_in_group(machine, main, args)
        return
    logger.info("starting %d processes (%s on %s) for a world of %d, init %s", num_per_machine, _backend(device_type),
                device_type, world_size, dist_url)
    error_dir = tempfile.mkdtemp(prefix="ifr-workers-")
    context = mp.start_processes(_worker, nprocs=num_per_machine, start_method="spawn", join=False,
                                 args=(main, args, machine, error_dir))
    try:
        while not context.join():
            pass
    except (mp.ProcessRaisedException, mp.ProcessExitedException):  # the others were terminated by join
        raise WorkerError(_first_failure(context, error_dir, machine_rank, num_per_machine)) from None
    finally:
        shutil.rmtree(error_dir, ignore_errors=True)
