"""Who a task runs as, and what that keeps from it.

Three modes; the node reports which one it runs (``specs.isolation``), as it
reports its limit mode:

``per_task_uid`` (``--task-uids 61000-61999``, the agent runs as root)
    Each running task gets a uid of its own from the range (gid the same
    number, no supplementary groups), like HTCondor's slot users. A task
    cannot read another task's files, signal or trace its processes, or read
    the agent's: they all belong to other uids. When a task ends, whatever
    still runs under its uid is killed before the uid is handed out again.
``task_user`` (``--task-user NAME``; ``nobody`` when the agent runs as root
and nothing else is said)
    Every task runs as that one unprivileged user. Tasks cannot read the
    agent's token, records or logs, nor list other tasks' directories; but
    tasks share a uid, so one task can reach another's processes (and
    through ``/proc/<pid>/cwd`` its directory) and signal them.
``shared_uid`` (the agent does not run as root, or ``--task-user root``)
    Tasks run as the agent's own uid. Nothing on the node separates a task
    from the agent or from other tasks: a task can read the agent's files,
    its token file among them. The agent still keeps its token out of its
    command line and environment and makes itself non-dumpable, which keeps
    ``/proc/<agent>/environ`` and its memory from processes of its uid.

The switch of identity happens in the task's shim, after it has entered the
task's cgroup as root: ``setpriv --reuid --regid --clear-groups
--no-new-privs`` (util-linux) runs the command. The shim stays root, so a task
cannot kill it or forge the exit status it writes into the agent's records.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from apportion.agent.checkpoint import Owner

DEFAULT_TASK_USER = "nobody"
FALLBACK_SANDBOXES = Path("/var/lib/apportion/sandbox")
"""Where a root agent puts task directories when task users cannot reach its
work directory (one under ``/root``, as ``apportion up`` makes)."""
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SWEEP_TIMEOUT_S = 5.0


class IsolationMode(StrEnum):
    SHARED_UID = "shared_uid"
    TASK_USER = "task_user"
    PER_TASK_UID = "per_task_uid"


class IsolationError(ValueError):
    """A task identity the agent cannot use, with what to do about it."""


@dataclass(frozen=True, slots=True)
class Identity:
    """The uid a task runs as (not the agent's)."""

    uid: int
    gid: int
    name: str | None = None
    """A user in the password database: its supplementary groups apply."""
    home: str | None = None

    def prefix(self, setpriv: str) -> list[str]:
        """The command that drops to this identity before the task's own."""
        groups = "--init-groups" if self.name else "--clear-groups"
        return [setpriv, f"--reuid={self.uid}", f"--regid={self.gid}", groups,
                "--no-new-privs", "--"]

    @property
    def owner(self) -> Owner:
        return Owner(self.uid, self.gid)


@dataclass(frozen=True, slots=True)
class Isolation:
    mode: IsolationMode
    reason: str
    user: Identity | None = None
    """``task_user``: the one identity of every task."""
    uids: range | None = None
    """``per_task_uid``: the range a task's uid comes from."""
    setpriv: str | None = None

    def spec(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": self.mode.value, "reason": self.reason}
        if self.user is not None:
            out["task_user"] = self.user.name or str(self.user.uid)
        if self.uids is not None:
            out["task_uids"] = f"{self.uids.start}-{self.uids.stop - 1}"
        return out


SHARED = Isolation(IsolationMode.SHARED_UID, "tasks run as the agent's uid")
"""What a runner does when told nothing (the unit tests' runners)."""


def choose_isolation(task_user: str | None, task_uids: str | None, *, euid: int | None = None,
                     which: Callable[[str], str | None] | None = None) -> Isolation:
    """The isolation the flags ask for on this host, or ``IsolationError``
    saying why it cannot be had."""
    euid = os.geteuid() if euid is None else euid
    if task_user is not None and task_uids is not None:
        raise IsolationError("--task-user and --task-uids: give one of them")
    if euid != 0:
        return _unprivileged(task_user, task_uids, euid)
    if task_user in ("root", "0"):
        return Isolation(IsolationMode.SHARED_UID,
                         "tasks run as root (--task-user root): nothing on the node "
                         "separates a task from the agent or from other tasks")
    setpriv = _setpriv(which or shutil.which)
    if task_uids is not None:
        uids = parse_uid_range(task_uids)
        return Isolation(IsolationMode.PER_TASK_UID,
                         f"each task runs under its own uid from {task_uids}", uids=uids,
                         setpriv=setpriv)
    user = lookup_user(task_user or DEFAULT_TASK_USER, default=task_user is None)
    return Isolation(IsolationMode.TASK_USER,
                     f"tasks run as {user.name} (uid {user.uid}); tasks share that uid, so "
                     "one task can reach another's processes and files through /proc "
                     "(--task-uids gives each task its own)", user=user, setpriv=setpriv)


def _unprivileged(task_user: str | None, task_uids: str | None, euid: int) -> Isolation:
    if task_uids is not None:
        raise IsolationError("--task-uids: the agent must run as root to run tasks "
                             "under other uids")
    if task_user is not None:
        user = lookup_user(task_user)
        if user.uid != euid:
            raise IsolationError(f"--task-user {task_user}: the agent must run as root to "
                                 "run tasks as another user")
    return Isolation(IsolationMode.SHARED_UID,
                     f"the agent does not run as root: tasks run as uid {euid}, as the agent "
                     "does, and can read the agent's files (its token file included) and "
                     "each other's")


def _setpriv(which: Callable[[str], str | None]) -> str:
    found = which("setpriv")
    if found is None:
        for directory in SYSTEM_PATH.split(":"):
            candidate = Path(directory) / "setpriv"
            if candidate.is_file():
                return str(candidate)
        raise IsolationError("running tasks under another uid needs setpriv (util-linux); "
                             "install it, or pass --task-user root")
    return found


def lookup_user(name: str, *, default: bool = False) -> Identity:
    """A user by name or number, with its primary group."""
    try:
        entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except (KeyError, ValueError):
        hint = (f"no user {name!r} on this host: create a dedicated unprivileged user and "
                "pass --task-user NAME (or --task-user root to run tasks as root)")
        raise IsolationError(hint if default else f"--task-user: {hint}") from None
    if entry.pw_uid == 0:
        raise IsolationError(f"--task-user {name}: that is root; say --task-user root")
    return Identity(entry.pw_uid, entry.pw_gid, entry.pw_name, entry.pw_dir)


def parse_uid_range(text: str) -> range:
    """``61000-61999`` as a range of unprivileged uids."""
    low, sep, high = text.partition("-")
    if not (sep and low.isdigit() and high.isdigit()) or int(low) > int(high):
        raise IsolationError(f"--task-uids {text!r}: give LOW-HIGH, e.g. 61000-61999")
    if int(low) < 1000:
        raise IsolationError(f"--task-uids {text!r}: start at 1000 or above, clear of "
                             "system users")
    return range(int(low), int(high) + 1)


# ---------------------------------------------------------------- identities


@dataclass
class Identities:
    """Hands each task the identity it runs as, and takes it back."""

    isolation: Isolation
    held: dict[str, Identity] = field(default_factory=dict)
    _sweeps: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    _swept: set[int] = field(default_factory=set)

    def take(self, task_id: str) -> Identity | None:
        """The identity for a new task (None: the agent's own)."""
        iso = self.isolation
        if iso.mode is IsolationMode.TASK_USER:
            assert iso.user is not None
            self.held[task_id] = iso.user
        elif iso.mode is IsolationMode.PER_TASK_UID:
            self.held[task_id] = self._free_uid()
        return self.held.get(task_id)

    def adopt(self, task_id: str, uid: int | None, gid: int | None) -> Identity | None:
        """A task a previous agent started keeps its identity."""
        if uid is None or uid == os.geteuid():
            return None
        user = self.isolation.user
        identity = user if user is not None and user.uid == uid else Identity(uid, gid or uid)
        self.held[task_id] = identity
        self._swept.add(uid)
        return identity

    def release(self, task_id: str) -> None:
        """The task ended: its per-task uid is swept clean, then free again."""
        identity = self.held.pop(task_id, None)
        if identity is not None and self.isolation.mode is IsolationMode.PER_TASK_UID:
            self._sweeps[identity.uid] = self._sweep(identity.uid)

    def _free_uid(self) -> Identity:
        uids = self.isolation.uids
        assert uids is not None
        busy = {i.uid for i in self.held.values()}
        for uid in uids:
            sweep = self._sweeps.get(uid)
            if uid in busy or (sweep is not None and sweep.poll() is None):
                continue
            if uid not in self._swept:
                # Anything a previous agent's task left under this uid goes first.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._sweep(uid).wait(SWEEP_TIMEOUT_S)
            return Identity(uid, uid)
        raise IsolationError(f"no free uid in --task-uids {uids.start}-{uids.stop - 1}: "
                             f"{len(busy)} tasks hold them all")

    def _sweep(self, uid: int) -> subprocess.Popen[bytes]:
        """SIGKILL every process of ``uid``: ``kill(-1)`` sent as that uid
        reaches exactly its processes (and never the sender itself)."""
        assert self.isolation.setpriv is not None
        self._swept.add(uid)
        command = [*Identity(uid, uid).prefix(self.isolation.setpriv), "/bin/sh", "-c",
                   "kill -9 -1 2>/dev/null; exit 0"]
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env={"PATH": SYSTEM_PATH})


# ---------------------------------------------------------------- the sandbox


def unsearchable(path: Path, uid: int, gids: set[int]) -> Path | None:
    """The first directory from ``/`` down to ``path`` that ``uid`` may not
    search (no x bit for it), or None. ACLs are not consulted."""
    for directory in [*reversed(path.parents), path]:
        st = os.stat(directory)
        if st.st_uid == uid:
            bit = stat.S_IXUSR
        elif st.st_gid in gids:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return directory
    return None


def choose_sandbox_root(work_dir: Path, configured: Path | None, isolation: Isolation,
                        node: str) -> Path:
    """``--sandbox-dir``, else ``<work_dir>/sandbox`` when task users can
    reach it (the agent makes its work directory 0711), else
    ``FALLBACK_SANDBOXES/<node>``."""
    default = work_dir / "sandbox"
    who = _checked_identity(isolation)
    if configured is not None:
        return configured
    if who is None or unsearchable(work_dir.parent, who.uid, {who.gid, *_groups(who)}) is None:
        return default
    return FALLBACK_SANDBOXES / node


def _checked_identity(isolation: Isolation) -> Identity | None:
    """An identity whose reach stands for every task's (None: the agent's own)."""
    if isolation.user is not None:
        return isolation.user
    if isolation.uids is not None:
        return Identity(isolation.uids.start, isolation.uids.start)
    return None


def make_sandbox_root(root: Path, isolation: Isolation) -> None:
    """The directory task directories live in: the agent's, searchable by
    task users but not listable (0711), so a task reaches only the directory
    whose name it was given. Refused if another user could write to it."""
    shared = isolation.mode is IsolationMode.SHARED_UID
    mode = 0o700 if shared else 0o711
    missing = [p for p in [*reversed(root.parents), root] if not p.exists()]
    for directory in missing:
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory, 0o755 if directory != root else mode)
        if directory != root:
            os.chmod(directory, 0o755)
    st = os.lstat(root)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise IsolationError(f"{root}: the sandbox directory must be a directory of the "
                             "agent's user that no one else can write to")
    os.chmod(root, mode)
    who = _checked_identity(isolation)
    if shared or who is None:
        return
    blocked = unsearchable(root, who.uid, {who.gid, *_groups(who)})
    if blocked is not None:
        raise IsolationError(
            f"tasks (uid {who.uid}) cannot reach {root}: {blocked} is not searchable by "
            "them; give --sandbox-dir under a searchable directory, e.g. "
            "/var/lib/apportion/sandbox")


def _groups(identity: Identity) -> list[int]:
    if identity.name is None:
        return []
    return os.getgrouplist(identity.name, identity.gid)


def read_task_file(directory: Path, name: str, limit: int, owner: int | None) -> bytes | None:
    """A small file a task writes for the agent (the guard's usage file),
    read without following a link, blocking on a FIFO, or reading more than
    ``limit``; None when it is absent, not a regular file of the task's uid,
    or too large."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=dir_fd)
    except OSError:
        return None
    finally:
        os.close(dir_fd)
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (owner is not None and st.st_uid != owner):
            return None
        data = fh.read(limit + 1)
    return data if len(data) <= limit else None
