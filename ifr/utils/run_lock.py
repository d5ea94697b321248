"""One run folder, one owner: the command that writes into an OUTPUT_DIR (a training, an evaluation)
claims it with a lock file, ``OUTPUT_DIR/run.lock``, naming the host, process id, start time and
command line. A second command that would write there is refused naming the owner; a lock left by a
process that was killed is taken over, saying so.

The claim is an exclusive ``flock`` on the lock file (the kernel releases it when its process dies,
however it dies), and the file's text says who holds it. Once the flock is held, a text naming a
live process of this host (a file system whose locks are not shared between processes) still
refuses; one naming a process of this host that no longer runs is a killed run's lock and is taken
over; one naming another host cannot be checked from here and refuses, saying how to remove it,
unless it is this SLURM job's own lock from before a requeue (same SLURM_JOB_ID, an earlier
SLURM_RESTART_COUNT: SLURM requeues a job only once its earlier run has ended), which is taken over.

Only the process that launches a job takes the lock (with torchrun, rank 0; under srun, task 0; on
several machines, machine 0): the workers it starts write through it, and none of them waits on it.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import sys
from typing import Iterator

from ifr.errors import UserError
from ifr.utils.atomic import remove_leftover_temporaries

logger = logging.getLogger(__name__)

LOCK_NAME = "run.lock"


class RunFolderBusy(UserError):
    """Another command owns the run folder."""


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _owner_text(owner: dict) -> str:
    return (f"{owner.get('command', '?')} (pid {owner.get('pid', '?')} on {owner.get('host', '?')}, started "
            f"{owner.get('started', '?')})")


def _read_owner(fd: int) -> dict | None:
    """The owner the lock file names; None for an empty file (nobody wrote one yet); ``{}`` for
    unreadable text (a write cut short)."""
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 1 << 16).decode("utf-8", "replace").strip()
    if not text:
        return None
    try:
        owner = json.loads(text)
    except ValueError:
        return {}
    return owner if isinstance(owner, dict) else {}


def _open_locked(path: str, folder: str, purpose: str) -> int:
    """The lock file's descriptor with the flock held; the file is the one at ``path`` (a holder
    that removed it meanwhile left its old inode behind: try the new file)."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"cannot create {path} ({e.strerror or e}): make OUTPUT_DIR {folder} writable, or set "
                            "OUTPUT_DIR to a folder you can write") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            owner = _read_owner(fd) or {}
            os.close(fd)
            raise RunFolderBusy(f"OUTPUT_DIR {folder} is in use by {_owner_text(owner)}: wait for it to end or stop "
                                f"it, or {purpose}") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _slurm_run() -> dict:
    """This process's SLURM job and requeue count, recorded in the lock (empty outside SLURM)."""
    if "SLURM_JOB_ID" not in os.environ:
        return {}
    return {"slurm_job_id": os.environ["SLURM_JOB_ID"],
            "slurm_restart_count": os.environ.get("SLURM_RESTART_COUNT", "0")}


def _earlier_run_of_this_slurm_job(owner: dict) -> bool:
    """Whether ``owner`` is this SLURM job before a requeue (its earlier run has ended)."""
    run = _slurm_run()
    if not run or owner.get("slurm_job_id") != run["slurm_job_id"]:
        return False
    try:
        return int(owner.get("slurm_restart_count", "0")) < int(run["slurm_restart_count"])
    except ValueError:
        return False


@contextlib.contextmanager
def claim_run_folder(folder: str, purpose: str = "set another OUTPUT_DIR") -> Iterator[None]:
    """Holds ``folder`` (created if needed) for the duration of the block; on entry also removes the
    temporary files of earlier killed writes in it (``remove_leftover_temporaries``: no other
    writer can be at work there while the claim is held). ``purpose``: what the refusal suggests
    besides waiting (e.g. "set another OUTPUT_DIR"). A folder this claim created and nothing wrote
    into (a job that failed before it started) is removed again."""
    created = not os.path.isdir(folder)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot write to OUTPUT_DIR {folder} ({e.strerror or e}): make it writable, or set "
                        "OUTPUT_DIR to a folder you can write (e.g. OUTPUT_DIR /tmp/run1)") from None
    path = os.path.join(folder, LOCK_NAME)
    fd = _open_locked(path, folder, purpose)
    claimed = False
    try:
        previous = _read_owner(fd)
        host = socket.gethostname()
        if previous:
            pid = previous.get("pid")
            if _earlier_run_of_this_slurm_job(previous):
                logger.warning("%s was left by %s, this SLURM job before it was requeued: taking the folder over",
                               path, _owner_text(previous))
            elif previous.get("host") != host:
                raise RunFolderBusy(
                    f"OUTPUT_DIR {folder} is claimed by {_owner_text(previous)}, another machine, so whether it "
                    f"still runs cannot be checked from here: if it no longer runs there, remove {path} and run "
                    f"this again; otherwise {purpose}")
            elif isinstance(pid, int) and pid != os.getpid() and _process_alive(pid):
                raise RunFolderBusy(f"OUTPUT_DIR {folder} is in use by {_owner_text(previous)}: wait for it to end or "
                                    f"stop it, or {purpose}")
            else:
                logger.warning("%s was left by %s, which no longer runs (killed?): taking the folder over", path,
                               _owner_text(previous))
        owner = {"host": host, "pid": os.getpid(),
                 "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
                 "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]), **_slurm_run()}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(owner).encode())
        os.fsync(fd)
        claimed = True
        removed = remove_leftover_temporaries(folder, claim_file=LOCK_NAME)
        if removed:
            logger.warning("removed %d temporary file(s) left in %s by an interrupted write: %s", len(removed), folder,
                           ", ".join(os.path.relpath(p, folder) for p in removed))
        yield
    finally:
        with contextlib.suppress(OSError):
            if claimed and os.fstat(fd).st_ino == os.stat(path).st_ino:
                os.remove(path)  # while still holding the flock: a waiting claimer re-opens the new file
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):  # not empty, or claimed again meanwhile: keep it
                os.rmdir(folder)


def launches_the_job(machine_rank: int = 0, slurm: bool = False) -> bool:
    """Whether this process takes the run folder's lock for its job: the launcher on machine 0, task 0
    of an srun step (``slurm``), or rank 0 under torchrun (every task or rank runs the command there)."""
    if slurm:
        return os.environ.get("SLURM_PROCID") == "0"
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return os.environ["RANK"] == "0"
    return machine_rank == 0
