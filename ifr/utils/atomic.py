"""Files written whole or not at all: each is written under a temporary name in its folder and
renamed over the destination (``os.replace`` is atomic on one file system), so an interrupted
command (killed, disk full, an error in the serializer) leaves the previous file or none, never a
truncated one. Files that belong together (one evaluation's results) are staged and put in place
as a set, so one command's files are never mixed with another's."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
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


class StagedFiles:
    """A set of files that replaces the previous set as a whole: ``stage(path, write)`` writes each
    under a temporary name; ``commit()`` removes every file of the previous set (``paths`` given at
    construction, whether staged again or not), then renames the staged files into place; ``discard()``
    removes the staged files. A command interrupted before ``commit`` leaves the previous set intact;
    one interrupted during it leaves a subset of the new files, never old and new side by side."""

    def __init__(self, paths: tuple[str, ...] = ()):
        self.previous = tuple(paths)
        self.staged: dict[str, str] = {}  # destination -> temporary file

    def stage(self, path: str, write: Callable[[str], object]) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        temporary = self.staged[path] = _temporary_path(path)
        write(temporary)

    def commit(self) -> None:
        for path in {*self.previous, *self.staged}:
            _remove(path)
        for path, temporary in self.staged.items():
            os.replace(temporary, path)
        self.staged.clear()

    def discard(self) -> None:
        for temporary in self.staged.values():
            _remove(temporary)
        self.staged.clear()

    def __enter__(self) -> "StagedFiles":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.commit()
        else:
            self.discard()
