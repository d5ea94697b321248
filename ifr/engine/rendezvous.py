"""Meeting the other processes of a job before training: the ``--dist-url`` forms, and a rendezvous
over TCP that ends with one clear message, within a time limit, when a machine does not join.

Process 0 serves a ``torch.distributed.TCPStore`` at ``tcp://HOST:PORT``; every process connects to it,
says it is there, and waits until all are. The waiting is polled here rather than left to the store's
own blocking calls, so a missing peer is named (which process and machine ranks) instead of a
timeout deep inside the process group's construction, and no C++ retry logs precede the message.
"""
from __future__ import annotations

import datetime
import re
import socket
import time

import torch.distributed as dist

from ifr.errors import UserError

# How long the processes wait for each other at the start by default (torch's own default for a
# process group's store): long enough for machines a scheduler starts minutes apart.
DEFAULT_JOIN_TIMEOUT_S = 1800.0
_POLL_S = 0.2
_TCP_URL = re.compile(r"tcp://(\[[0-9a-fA-F:.]+\]|[^:/\[\]]+):(\d{1,5})")


class JoinError(UserError):
    """The processes of a multi-machine job did not all meet within the time limit."""


def check_dist_url(url: str) -> None:
    """``--dist-url`` must be "auto", "env://" or ``tcp://HOST:PORT`` (port 1-65535)."""
    if url in ("auto", "env://"):
        return
    match = _TCP_URL.fullmatch(url)
    if match is None or not 0 < int(match.group(2)) < 65536:
        raise UserError(f"--dist-url {url!r} is not tcp://HOST:PORT (HOST: machine 0's address as the others reach "
                        "it, PORT: a free port there, e.g. tcp://10.0.0.1:29500), env:// or auto")


def tcp_address(url: str) -> tuple[str, int]:
    """(host, port) of a ``tcp://HOST:PORT`` URL (an IPv6 host without its brackets)."""
    check_dist_url(url)
    match = _TCP_URL.fullmatch(url)
    if match is None:
        raise UserError(f"--dist-url {url!r} names no address: pass tcp://HOST:PORT")
    return match.group(1).strip("[]"), int(match.group(2))


def _ranges(ranks: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2, 5"."""
    spans: list[list[int]] = []
    for rank in sorted(ranks):
        if spans and rank == spans[-1][1] + 1:
            spans[-1][1] = rank
        else:
            spans.append([rank, rank])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def _wait_until_reachable(host: str, port: int, deadline: float, url: str, timeout_s: float, advice: str) -> None:
    while True:
        try:
            socket.create_connection((host, port), timeout=max(0.1, min(5.0, deadline - time.monotonic()))).close()
            return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise JoinError(f"machine 0 was not reached at {url} within {timeout_s:g} s ({e.strerror or e}): "
                                f"{advice}") from None
            time.sleep(_POLL_S)


def join_tcp_store(url: str, rank: int, world_size: int, num_per_machine: int, timeout_s: float,
                   advice: str) -> dist.TCPStore:
    """Meets the ``world_size`` processes at ``url`` (process 0 serves the store there) and returns the
    store, ready for ``init_process_group(store=...)``. Raises ``JoinError`` naming the processes and
    machines (rank // num_per_machine) still missing after ``timeout_s`` seconds; ``advice`` ends the
    message (what to start or check)."""
    host, port = tcp_address(url)
    deadline = time.monotonic() + timeout_s
    timeout = datetime.timedelta(seconds=timeout_s)
    if rank == 0:
        try:
            store = dist.TCPStore(host, port, world_size, is_master=True, timeout=timeout, wait_for_workers=False)
        except RuntimeError as e:  # DistNetworkError on torch 2.14; a plain RuntimeError on torch 2.6
            raise JoinError(f"process 0 cannot serve {url} on this machine ({e}): the port is taken (another job?) "
                            "or the address is not this machine's; pass --dist-url with machine 0's address and a "
                            "free port") from None
    else:
        _wait_until_reachable(host, port, deadline, url, timeout_s, advice)
        try:
            store = dist.TCPStore(host, port, world_size, is_master=False, timeout=timeout)
        except RuntimeError as e:  # DistError on recent torch, a plain RuntimeError on torch 2.6
            raise JoinError(f"what answers at {url} is not this job's process 0 ({e}): {advice}") from None
    keys = [f"ifr/joined/{r}" for r in range(world_size)]
    try:
        store.set(keys[rank], "1")
        while not store.check(keys):
            if time.monotonic() >= deadline:
                missing = [r for r in range(world_size) if not store.check([keys[r]])]
                machines = sorted({r // num_per_machine for r in missing})
                raise JoinError(f"machine rank {_ranges(machines)} of {world_size // num_per_machine} (process "
                                f"{_ranges(missing)} of {world_size}) did not join {url} within {timeout_s:g} s: "
                                f"{advice}")
            time.sleep(_POLL_S)
    except dist.DistError:  # process 0 gave up waiting (it says who is missing) or was stopped
        raise JoinError(f"process 0 at {url} stopped before every process joined: see machine 0's error") from None
    return store
