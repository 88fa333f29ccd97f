"""Empty directories and files handed on from a task that is done to the
next one, so that most tasks cost neither a mkdir nor an rmdir for theirs:
empty checkpoint directories, whole sandboxes a task left empty (with their
empty checkpoint directory), and empty logs.

Why: every task is promised an empty checkpoint directory and most leave it
empty. Making a directory allocates an inode and a block, and removing one
frees them; on the development machine's ext4 (mounted with ``discard``)
that cost a quarter of a millisecond and 2-4 ms of the agent's loop
respectively, where a rename cost about ten microseconds (bench/README.md).

Creating an inode is what costs: on the e2e bench's host (ext4 without a
journal, where the inode allocator skips every recently deleted inode and
reads its block to know) each ``mkdir`` or new file took 0.25-0.7 ms of CPU,
a third of the agent's CPU a task, against 10-15 us for a ``rename``
(bench/README.md, h24-e2e).

Only what tasks that run as the agent's own uid leave is handed on (a task
under another uid shares nothing with the next), and only a real directory
(or file) of the agent's, with its mode and empty: checked when it is set
aside and again once it is in its new place (a process the old task left
behind could still hold it open). A log is set aside only when no process
has it open at all (a write lease is granted only then), so nothing an old
task left running writes into the next task's log. The spares wait in a
directory whose name no task id can take (ids start with a letter or a
digit): ``<sandbox root>/.spare/`` and ``.spare-sandbox/``, and
``<work dir>/tasks/.spare-logs/`` and ``.spare-records/`` (the agent's own
directories of a task's records, emptied once it was reported).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

SPARE_DIR = ".spare"
SANDBOX_SPARE_DIR = ".spare-sandbox"
LOG_SPARE_DIR = ".spare-logs"
RECORDS_SPARE_DIR = ".spare-records"
CHECKPOINT = "checkpoint"
"""The name of a sandbox's checkpoint directory (``LocalTask.checkpoint_dir``)."""
LIMIT = 256
"""Spares kept at most (more tasks than that ending at once leave theirs)."""

Check = Callable[[Path, int], bool]
"""Whether a path may be handed on (the agent's uid given)."""


class Spares:
    """The empty directories (or files) set aside for the next tasks:
    ``check`` says what may be set aside, ``recheck`` what may be taken
    once moved into place (``check`` unless said)."""

    def __init__(self, root: Path, limit: int = LIMIT, *, name: str = SPARE_DIR,
                 check: Check | None = None, recheck: Check | None = None) -> None:
        self.dir = root / name
        self.limit = limit
        self.free: list[Path] = []
        self.uid = os.geteuid()
        self.check: Check = check or empty_own_dir
        self.recheck: Check = recheck or self.check

    def load(self) -> None:
        """Take up the spares a previous agent left (checked when taken)."""
        self.dir.mkdir(mode=0o700, exist_ok=True)
        with os.scandir(self.dir) as entries:
            self.free = [Path(e.path) for e in entries][: self.limit]

    def put(self, path: Path, name: str) -> bool:
        """Set ``path`` aside as ``name`` if ``check`` allows (False: it was
        left where it is)."""
        if len(self.free) >= self.limit or not self.check(path, self.uid):
            return False
        spare = self.dir / name
        try:
            os.rename(path, spare)
        except OSError:
            return False
        self.free.append(spare)
        return True

    def take(self, dest: Path) -> bool:
        """Move a spare to ``dest``; False when ``dest`` exists already (a
        rename would replace it), none was left, or none was still empty."""
        if self.free and os.path.lexists(dest):
            return False
        while self.free:
            spare = self.free.pop()
            try:
                os.rename(spare, dest)
            except OSError:
                continue
            if self.recheck(dest, self.uid):
                return True
            discard(dest)
        return False


def empty_own_dir(path: Path, uid: int | None = None) -> bool:
    """``path`` is a directory (not a link to one) of ``uid`` (the agent's),
    mode 0700, with nothing in it. By path, not through a descriptor: a
    descriptor's scan costs a dup and its flags, and what could swap the
    directory in between is a process of the agent's own uid."""
    if not _own_dir(path, uid):
        return False
    try:
        with os.scandir(path) as entries:
            return next(entries, None) is None
    except OSError:
        return False


def bare_sandbox(path: Path, uid: int | None = None) -> bool:
    """``path`` is a sandbox holding nothing but its empty checkpoint
    directory, both directories of ``uid``'s with mode 0700."""
    if not _own_dir(path, uid):
        return False
    try:
        with os.scandir(path) as entries:
            names = [e.name for e in entries]
    except OSError:
        return False
    return names == [CHECKPOINT] and empty_own_dir(path / CHECKPOINT, uid)


def empty_own_log(path: Path, uid: int | None = None) -> bool:
    """``path`` is an empty file of ``uid``'s (not a link), mode 0600, with
    one name."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
            and st.st_uid == (os.geteuid() if uid is None else uid)
            and st.st_size == 0 and st.st_nlink == 1)


def idle_empty_log(path: Path, uid: int | None = None) -> bool:
    """``empty_own_log``, and no process has it open: a write lease is
    granted only to the file's only opener, so a process a task left
    behind with the log as its output keeps it from being handed on."""
    if not empty_own_log(path, uid):
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        st = os.fstat(fd)
        return st.st_size == 0 and st.st_nlink == 1 and stat.S_ISREG(st.st_mode)
    except OSError:
        return False
    finally:
        os.close(fd)


def _own_dir(path: Path, uid: int | None) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700
            and st.st_uid == (os.geteuid() if uid is None else uid))


def discard(path: Path) -> None:
    """Remove a spare that may not be handed on: a directory with what is
    in it, or a file or link."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
        return
    with contextlib.suppress(OSError):
        path.unlink()


def remove_tree(path: Path) -> None:
    """Remove a directory and what is in it; a link in its place goes, never
    its target. Errors are left: what cannot go stays where it is."""
    if path.is_symlink():
        with contextlib.suppress(OSError):
            path.unlink()
        return
    shutil.rmtree(path, ignore_errors=True)
