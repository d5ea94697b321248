"""A process started by SLURM's ``srun`` (one task per GPU): its rank, local rank, machine and the
address of machine 0, from the environment srun gives every task."""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Mapping

from ifr.errors import UserError

# Without MASTER_PORT, the port is derived from the job id: the same for every task of a job, and
# unlikely to be the port of another job sharing machine 0. Below Linux's ephemeral range (32768-).
_PORT_BASE, _PORT_SPAN = 10000, 20000


def _split_top_level(text: str) -> list[str]:
    """Splits at the commas that are outside brackets."""
    items, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth not in (0, 1):
            raise ValueError(f"nested or unbalanced brackets in {text!r}")
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    if depth:
        raise ValueError(f"unbalanced brackets in {text!r}")
    return items + [current]


def _expand_range(group: str) -> list[str]:
    """"01-03,07" -> ["01", "02", "03", "07"]: zero padding as the lower bound is written."""
    numbers = []
    for span in group.split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", span.strip())
        if match is None:
            raise ValueError(f"[{group}] is not a list of numbers and ranges")
        low, high = match.group(1), match.group(2) or match.group(1)
        if int(high) < int(low):
            raise ValueError(f"range {span} runs backwards")
        numbers += [f"{i:0{len(low)}d}" for i in range(int(low), int(high) + 1)]
    return numbers


def expand_nodelist(nodelist: str) -> list[str]:
    """SLURM's compressed host list as host names, in order (what ``scontrol show hostnames`` prints):
    "node[01-03,07]" -> node01, node02, node03, node07; "a[1-2]-ib[5,7],b3" -> a1-ib5, a1-ib7, a2-ib5,
    a2-ib7, b3. Raises ValueError for a malformed list."""
    hosts = []
    for item in _split_top_level(nodelist.strip()):
        if not item:
            raise ValueError(f"empty host name in {nodelist!r}")
        choices = [_expand_range(part[1:-1]) if part.startswith("[") else [part]
                   for part in re.split(r"(\[[^\]]*\])", item) if part]
        hosts += ["".join(parts) for parts in itertools.product(*choices)]
    return hosts


@dataclass(frozen=True)
class SlurmTask:
    """One srun task: its process rank among ``world_size``, its rank on its machine (its GPU), its
    machine among ``num_machines``, and machine 0's ``tcp://`` address."""
    rank: int
    world_size: int
    local_rank: int
    machine_rank: int
    num_machines: int
    dist_url: str


def _variable(environ: Mapping[str, str], *names: str) -> str:
    for name in names:
        if environ.get(name):
            return environ[name]
    raise UserError(f"--slurm: {names[0]} is not set: run the command under srun, one task per GPU (e.g. srun "
                    "--ntasks-per-node 8 pods_train --slurm ... inside an sbatch script; scripts/slurm_train.sbatch)")


def _integer(environ: Mapping[str, str], *names: str) -> int:
    value = _variable(environ, *names)
    if not value.isdigit():
        raise UserError(f"--slurm: {names[0]}={value!r} is not a number: is this SLURM's environment?")
    return int(value)


def slurm_task(environ: Mapping[str, str]) -> SlurmTask:
    """This task, from srun's variables (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_NODEID,
    SLURM_NNODES, the step's or job's node list, SLURM_JOB_ID). Machine 0 is the first host of the
    node list unless MASTER_ADDR is set; the port is MASTER_PORT, else derived from the job id."""
    nodelist = _variable(environ, "SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
    try:
        hosts = expand_nodelist(nodelist)
    except ValueError as e:
        raise UserError(f"--slurm: the node list {nodelist!r} cannot be read ({e}): set MASTER_ADDR to machine 0's "
                        "address") from None
    address = environ.get("MASTER_ADDR") or hosts[0]
    if environ.get("MASTER_PORT"):
        port = _integer(environ, "MASTER_PORT")
    else:
        port = _PORT_BASE + _integer(environ, "SLURM_JOB_ID") % _PORT_SPAN
    host = f"[{address}]" if ":" in address else address
    return SlurmTask(rank=_integer(environ, "SLURM_PROCID"), world_size=_integer(environ, "SLURM_NTASKS"),
                     local_rank=_integer(environ, "SLURM_LOCALID"), machine_rank=_integer(environ, "SLURM_NODEID"),
                     num_machines=_integer(environ, "SLURM_STEP_NUM_NODES", "SLURM_NNODES", "SLURM_JOB_NUM_NODES"),
                     dist_url=f"tcp://{host}:{port}")
