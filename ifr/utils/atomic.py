"""Files written whole or not at all: each is written under a temporary name in its folder and
renamed over the destination (``os.replace`` is atomic on one file system), so an interrupted
command (killed, disk full, an error in the serializer) leaves the previous file or none, never a
truncated one. Files that belong together (one evaluation's results) are written into a new folder
and switched in as a set by one rename, so one command's files are never mixed with another's."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import uuid
from typing import Callable, Iterator


def _temporary_path(path: str) -> str:
    """A new hidden file next to ``path`` keeping its extension (PIL and matplotlib choose the
    format from it)."""
    folder, name = os.path.split(os.path.abspath(path))
    stem, ext = os.path.splitext(name)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{stem}.", suffix=f".tmp{ext}")
    os.close(handle)
    umask = os.umask(0)  # mkstemp's file is private (0600); the result gets a new file's usual mode
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    return temporary


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def json_writer(data, **kwargs) -> Callable[[str], None]:
    """A ``write`` for ``write_atomically`` / ``StagedFiles.stage``: ``data`` as JSON (``json.dump``'s
    ``kwargs``)."""
    def write(path: str) -> None:
        with open(path, "w") as f:
            json.dump(data, f, **kwargs)
    return write


def write_atomically(path: str, write: Callable[[str], object]) -> None:
    """``write(temporary_path)`` (e.g. ``lambda p: torch.save(obj, p)``), then the result renamed to
    ``path``. On any failure, interruptions included, the temporary file is removed and ``path`` is
    as it was."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temporary = _temporary_path(path)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        _remove(temporary)
        raise


@contextlib.contextmanager
def open_atomically(path: str, mode: str = "w", **kwargs) -> Iterator:
    """``with open_atomically(path) as f:`` writes ``f`` to ``path`` when the block completes, and
    leaves ``path`` untouched when it raises."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temporary = _temporary_path(path)
    try:
        with open(temporary, mode, **kwargs) as file:
            yield file
        os.replace(temporary, path)
    except BaseException:
        _remove(temporary)
        raise


# The names ``_temporary_path`` and ``StagedFiles`` give: ``.<stem>.<mkstemp's 8 characters>.tmp[.ext]``.
_TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp(\.\w+)?")
_SET_PREFIX = ".set-"
_SET = re.compile(re.escape(_SET_PREFIX) + r"[a-z0-9_]{8}")
_CURRENT = ".current_set"


def remove_leftover_temporaries(folder: str, claim_file: str | None = None) -> list[str]:
    """Removes the temporary files of writes that were killed before their rename, in ``folder`` and
    its direct subfolders (a run folder's ``inference/``; not deeper, in case OUTPUT_DIR is a folder
    holding other things), and the file sets of ``StagedFiles`` commits that were cut short; returns
    their paths. Only for a folder no other command is writing (the run folder's owner, see
    ``ifr.utils.run_lock``): a live writer's temporary file looks the same. A subfolder holding a
    file named ``claim_file`` is claimed by a command of its own (e.g. ``pods_demo``'s OUTPUT_DIR/demo)
    and left to it."""
    removed = []
    depth = os.path.abspath(folder).rstrip(os.sep).count(os.sep)
    for root, dirs, files in os.walk(folder):
        if claim_file and root != folder and claim_file in files:
            dirs[:] = []
            continue
        current = os.path.join(root, _CURRENT)
        live_set = os.readlink(current) if os.path.islink(current) else None
        for name in files + dirs:
            path = os.path.join(root, name)
            if _TEMPORARY.fullmatch(name) or (_SET.fullmatch(name) and name != live_set):
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    _remove(path)
                removed.append(path)
        at_depth = os.path.abspath(root).count(os.sep) - depth
        dirs[:] = [] if at_depth >= 1 else [d for d in dirs if os.path.join(root, d) not in removed]
    return sorted(removed)


def _point_link(link: str, target: str) -> None:
    """Makes the symlink ``link`` point to ``target`` in one rename (never absent meanwhile)."""
    temporary = os.path.join(os.path.dirname(link), f".{os.path.basename(link)}.{uuid.uuid4().hex[:8]}.tmp")
    os.symlink(target, temporary)
    try:
        os.replace(temporary, link)
    except BaseException:
        _remove(temporary)
        raise


class StagedFiles:
    """A set of files (``names`` in ``folder``) that replaces the previous set as a whole.

    ``stage(name, write)`` writes ``folder/.set-XXXX/name``; ``commit()`` switches the symlink
    ``folder/.current_set`` to that folder in one rename. Each ``folder/name`` is a symlink to
    ``.current_set/name``, so what a reader sees is one set or the other at every moment: a command
    killed at any step of ``commit`` leaves the previous set or the new one, never a mix (a name the
    new set lacks is absent with it). Files from before this layout (plain files) are first moved
    into a set of their own the same way. ``discard()`` removes what was staged."""

    def __init__(self, folder: str, names: tuple[str, ...]):
        self.folder = folder
        self.names = tuple(names)
        self.staging: str | None = None

    def stage(self, name: str, write: Callable[[str], object]) -> None:
        if name not in self.names:
            raise ValueError(f"{name} is not one of the set's files {self.names}")
        if self.staging is None:
            os.makedirs(self.folder, exist_ok=True)
            self.staging = tempfile.mkdtemp(dir=self.folder, prefix=_SET_PREFIX)
        write(os.path.join(self.staging, name))

    def commit(self) -> None:
        if self.staging is None:
            self.staging = tempfile.mkdtemp(dir=self.folder, prefix=_SET_PREFIX)  # an empty set
        current = os.path.join(self.folder, _CURRENT)
        self._adopt_plain_files(current)
        previous = os.readlink(current) if os.path.islink(current) else None
        for name in self.names:  # links to the current set: they show the previous set until the switch
            path, target = os.path.join(self.folder, name), os.path.join(_CURRENT, name)
            if not (os.path.islink(path) and os.readlink(path) == target):
                _point_link(path, target)
        _point_link(current, os.path.basename(self.staging))  # the switch
        self.staging = None
        if previous:
            shutil.rmtree(os.path.join(self.folder, previous), ignore_errors=True)

    def _adopt_plain_files(self, current: str) -> None:
        """Plain files of the set (written before this layout) become a set folder of their own,
        then links to it: every step shows their content."""
        paths = [os.path.join(self.folder, name) for name in self.names]
        if not any(os.path.isfile(p) and not os.path.islink(p) for p in paths):
            return
        adopted = tempfile.mkdtemp(dir=self.folder, prefix=_SET_PREFIX)
        for name, path in zip(self.names, paths):
            if os.path.isfile(path):  # a plain file, or a link into the current set
                os.link(os.path.realpath(path), os.path.join(adopted, name))
        _point_link(current, os.path.basename(adopted))
        for name in self.names:
            _point_link(os.path.join(self.folder, name), os.path.join(_CURRENT, name))

    def discard(self) -> None:
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None

    def __enter__(self) -> "StagedFiles":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.commit()
        else:
            self.discard()
