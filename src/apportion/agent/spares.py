"""Empty checkpoint directories handed on from a task that is done to the
next one, so that most tasks cost neither a mkdir nor an rmdir for theirs.

Why: every task is promised an empty checkpoint directory and most leave it
empty. Making a directory allocates an inode and a block, and removing one
frees them; on the development machine's ext4 (mounted with ``discard``)
that cost a quarter of a millisecond and 2-4 ms of the agent's loop
respectively, where a rename cost about ten microseconds (bench/README.md).

Only the directories of tasks that run as the agent's own uid are handed on
(a task under another uid shares nothing with the next), and only a real
directory of the agent's, mode 0700 and empty: checked when it is set aside
and again once it is in its new place (a process the old task left behind
could still hold it open). The spares wait in ``<sandbox root>/.spare/``, a
name no task id can take (ids start with a letter or a digit).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from pathlib import Path

SPARE_DIR = ".spare"
LIMIT = 256
"""Spares kept at most (more tasks than that ending at once leave theirs)."""


class Spares:
    """The empty directories set aside for the next tasks."""

    def __init__(self, sandbox_root: Path, limit: int = LIMIT) -> None:
        self.dir = sandbox_root / SPARE_DIR
        self.limit = limit
        self.free: list[Path] = []
        self.uid = os.geteuid()

    def load(self) -> None:
        """Take up the spares a previous agent left (checked when taken)."""
        self.dir.mkdir(mode=0o700, exist_ok=True)
        with os.scandir(self.dir) as entries:
            self.free = [Path(e.path) for e in entries][: self.limit]

    def put(self, path: Path, name: str) -> bool:
        """Set ``path`` aside as ``name`` if it is an empty directory of ours
        (False: it was left where it is)."""
        if len(self.free) >= self.limit or not empty_own_dir(path, self.uid):
            return False
        spare = self.dir / name
        try:
            os.rename(path, spare)
        except OSError:
            return False
        self.free.append(spare)
        return True

    def take(self, dest: Path) -> bool:
        """Move a spare to ``dest`` (which must not exist); False when none
        was left, or none was still empty."""
        while self.free:
            spare = self.free.pop()
            try:
                os.rename(spare, dest)
            except OSError:
                continue
            if empty_own_dir(dest, self.uid):
                return True
            remove_tree(dest)
        return False


def empty_own_dir(path: Path, uid: int | None = None) -> bool:
    """``path`` is a directory (not a link to one) of ``uid`` (the agent's),
    mode 0700, with nothing in it. By path, not through a descriptor: a
    descriptor's scan costs a dup and its flags, and what could swap the
    directory in between is a process of the agent's own uid."""
    try:
        st = os.lstat(path)
        if (not stat.S_ISDIR(st.st_mode) or stat.S_IMODE(st.st_mode) != 0o700
                or st.st_uid != (os.geteuid() if uid is None else uid)):
            return False
        with os.scandir(path) as entries:
            return next(entries, None) is None
    except OSError:
        return False


def remove_tree(path: Path) -> None:
    """Remove a directory and what is in it; a link in its place goes, never
    its target. Errors are left: what cannot go stays where it is."""
    if path.is_symlink():
        with contextlib.suppress(OSError):
            path.unlink()
        return
    shutil.rmtree(path, ignore_errors=True)
