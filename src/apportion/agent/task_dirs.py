"""A task's files on disk: its sandbox and checkpoint directory made before
it runs, its two logs opened for it, and what is left of them once the
server has its exit. The ``Runner`` decides when; this module decides how
(``runner.py`` describes the layout).

A task that runs as the agent's uid and leaves nothing behind hands its
empty sandbox (with its empty checkpoint directory), its empty logs and
then its records' directory on to the next task (``spares.py``): of the
five inodes a short task took (its two directories, its record, its two
logs), only its record is new. Its reported records keep the logs it wrote
to; a log it never wrote to is not kept (a missing log reads as an empty
one: ``Reporting._ship_logs``), nor is a sandbox it left empty. A reported
task whose records' directory went on keeps its record as
``<work dir>/tasks/.done/<task id>.json``: still known (never run twice),
still there to send its exit again (``record_of``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

from apportion.agent import record
from apportion.agent.local_task import LocalTask
from apportion.agent.record import RECORD
from apportion.agent.spares import (
    LOG_SPARE_DIR,
    RECORDS_SPARE_DIR,
    SANDBOX_SPARE_DIR,
    Spares,
    bare_sandbox,
    empty_own_log,
    idle_empty_log,
    remove_tree,
)

REPORTED = "reported"
DONE_DIR = ".done"
"""Under the tasks' directory: the records of reported tasks whose own
directory was handed on (a name no task id can take)."""
LOG_STREAMS = ("stdout", "stderr")
_OPEN_LOG = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC


class TaskDirs:
    """Makes and retires the directories and logs of this node's tasks."""

    def __init__(self, tasks_dir: Path, sandbox_root: Path) -> None:
        self.tasks_dir = tasks_dir
        self.done = tasks_dir / DONE_DIR
        self.spares = Spares(sandbox_root)
        """Empty checkpoint directories of tasks that are done, for the next."""
        self.sandboxes = Spares(sandbox_root, name=SANDBOX_SPARE_DIR, check=bare_sandbox)
        """Sandboxes left empty, each with its empty checkpoint directory."""
        self.logs = Spares(tasks_dir, name=LOG_SPARE_DIR, check=idle_empty_log,
                           recheck=empty_own_log)
        """Logs no task wrote to and no process holds open."""
        self.records = Spares(tasks_dir, name=RECORDS_SPARE_DIR)
        """Records' directories emptied when their task was reported."""
        self.sandbox_needs_cgroup = True
        """Hand a sandbox on only from a task whose cgroup was killed and
        removed. Without one, a process the task started in a new session
        outlives the group's kill, and one whose working directory is the
        sandbox would write into the next task's. False only where nothing a
        task starts can outlive it (the tests of the hand-on itself)."""

    def load(self) -> None:
        """Take up what a previous agent set aside."""
        self.done.mkdir(mode=0o700, exist_ok=True)
        for pool in (self.spares, self.sandboxes, self.logs, self.records):
            pool.load()

    def make_records(self, task_id: str) -> Path:
        """The task's new records' directory (``FileExistsError`` when the
        task has one already)."""
        task_dir = self.tasks_dir / task_id
        if not self.records.take(task_dir):
            task_dir.mkdir(mode=0o700)
        return task_dir

    def known(self, task_id: str) -> bool:
        """Whether this node ever took the task (its records are kept)."""
        return (self.tasks_dir / task_id).exists() or self._done(task_id).exists()

    def record_of(self, task_id: str) -> dict[str, Any]:
        """A task's record, wherever it is kept (``OSError``, ``ValueError``
        as ``record.read``)."""
        try:
            return record.read(self.tasks_dir / task_id)
        except FileNotFoundError:
            return record.read_file(self._done(task_id))

    def _done(self, task_id: str) -> Path:
        return self.done / f"{task_id}.json"

    def make_sandbox(self, task: LocalTask) -> None:
        """The task's own directory and its empty checkpoint directory."""
        assert task.sandbox is not None
        if task.identity is None and self.sandboxes.take(task.sandbox):
            return
        task.sandbox.mkdir(mode=0o700)
        if task.identity is None and self.spares.take(task.checkpoint_dir):
            return
        task.checkpoint_dir.mkdir(mode=0o700)
        if task.identity is not None:
            for directory in (task.sandbox, task.checkpoint_dir):
                os.chown(directory, task.identity.uid, task.identity.gid)

    def open_logs(self, task: LocalTask) -> list[int]:
        """Descriptors of the task's logs (``LOG_STREAMS``' order), for its
        process to write to; the caller closes them."""
        fds: list[int] = []
        try:
            for stream in LOG_STREAMS:
                path = task.dir / f"{stream}.log"
                if task.identity is None:
                    self.logs.take(path)  # opened below, as a new one would be
                fds.append(os.open(path, _OPEN_LOG, 0o600))
        except OSError:
            for fd in fds:
                os.close(fd)
            raise
        return fds

    def retire(self, task: LocalTask) -> None:
        """The server has the task's exit: mark it reported and tidy its
        sandbox. A task that ran under another uid leaves nothing in its
        sandbox (that uid may be another task's next); otherwise its working
        files stay, less what it saved to its checkpoint and resume
        directories. A sandbox left empty (most short tasks'), or else an
        empty checkpoint directory, and the logs nothing was written to go
        to the next task (``spares.py``), or stay when enough are set aside:
        making a directory or a file, or removing a directory, cost more
        than anything else the agent did for a short task (bench/README.md)."""
        if not task.dir.exists():
            return  # retired already: its records' directory went on
        if task.identity is not None and task.sandbox is not None:
            mark_reported(task.dir)
            remove_tree(task.sandbox)
            return
        if task.identity is None and all([  # a list: each log is offered
                self.logs.put(task.dir / f"{stream}.log", f"{task.id}.{stream}")
                for stream in LOG_STREAMS]):
            self._hand_on_records(task)
        else:
            mark_reported(task.dir)
        if task.assignment.resume_task is not None:
            remove_tree(task.resume_dir)
        if task.sandbox is not None and self._all_ended(task) \
                and self.sandboxes.put(task.sandbox, task.id):
            return
        if not self.spares.put(task.checkpoint_dir, task.id):
            empty(task.checkpoint_dir)


    def _all_ended(self, task: LocalTask) -> bool:
        """Whether nothing the task started can still be running."""
        if not self.sandbox_needs_cgroup:
            return True
        return task.cgroup is not None and not task.cgroup.exists()

    def _hand_on_records(self, task: LocalTask) -> None:
        """Move the record of a task whose logs went on to ``DONE_DIR`` (the
        mark that it is reported), and its emptied directory to the next
        task; the usual mark where the record cannot move."""
        try:
            os.rename(task.dir / RECORD, self._done(task.id))
        except OSError:
            mark_reported(task.dir)
            return
        self.records.put(task.dir, task.id)  # stays, without its record, if not empty


def empty(path: Path) -> None:
    """Remove what a task left in a directory of its own, and the directory
    with it; leave an empty one (a link or a file in its place goes)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    except OSError:
        with contextlib.suppress(OSError):
            path.unlink()
        return
    try:
        with os.scandir(fd) as entries:
            if next(entries, None) is None:
                return
    finally:
        os.close(fd)
    shutil.rmtree(path, ignore_errors=True)


def mark_reported(task_dir: Path) -> None:
    """Leave the mark that the server has the task's exit: a second name for
    the record. A link adds a directory entry where a new file takes an
    inode, which costs several times more on ext4 (bench/README.md)."""
    marker = task_dir / REPORTED
    try:
        os.link(task_dir / RECORD, marker)
    except FileExistsError:
        pass
    except OSError:  # no record to link to, or a file system without links
        marker.touch()
