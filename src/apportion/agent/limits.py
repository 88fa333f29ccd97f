"""Confining tasks to what they were granted.

Two modes, and the node reports which one it runs (``LimitSupport.mode``):

``cgroup_v2``
    Each task runs in its own cgroup under a delegated parent, with
    ``cpu.max`` (a CFS quota: the task may burst to its share, never above)
    and ``memory.max`` (the kernel reclaims, then OOM-kills inside the task).
    Chosen when cgroup v2 is mounted, the ``cpu`` and ``memory`` controllers
    are available to the parent, and the agent can create children there.

``rlimit_watchdog``
    Everywhere else (cgroup v1 hosts, unprivileged containers). Tasks start
    in their own session (so their whole tree can be killed) and a
    ``MemoryWatchdog`` polls each task's tree RSS and kills a task that goes
    over its memory grant. CPU is not enforced in this mode: the scheduler
    still never grants more than the node has, but a task may use idle
    cores. ``RLIMIT_AS`` is deliberately not used: it caps address space,
    not memory, and breaks the JVM, Go, CUDA and anything else that reserves
    large virtual ranges up front.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import resource
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import psutil

from apportion.exceptions import InvalidInput

REQUIRED_CONTROLLERS = ("cpu", "memory")
CPU_PERIOD_US = 100_000
MIN_CPU_QUOTA_US = 1_000  # the kernel refuses smaller quotas
AGENT_LEAF = "apportion-agent"
TASK_PREFIX = "task-"
MOUNTINFO = Path("/proc/self/mountinfo")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
_TASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class LimitMode(StrEnum):
    CGROUP_V2 = "cgroup_v2"
    RLIMIT_WATCHDOG = "rlimit_watchdog"


@dataclass(frozen=True, slots=True)
class LimitSupport:
    """The mode this agent enforces limits in, why, and (for cgroup v2) the
    cgroup that task cgroups are created under."""

    mode: LimitMode
    reason: str
    parent: Path | None = None


def _fallback(reason: str) -> LimitSupport:
    return LimitSupport(LimitMode.RLIMIT_WATCHDOG, reason)


# ---------------------------------------------------------------- detection


def detect_limits(
    parent: Path | None = None,
    *,
    relocate: bool = True,
    mountinfo: Path = MOUNTINFO,
    proc_cgroup: Path = PROC_SELF_CGROUP,
) -> LimitSupport:
    """Find out whether task limits can use cgroup v2.

    ``parent`` is a configured cgroup to create task cgroups under; without
    one the agent uses its own cgroup (run it under systemd with
    ``Delegate=yes``, or in a container with a private cgroup namespace).
    Enabling controllers for children is refused while processes sit in the
    parent itself (cgroup v2's "no internal processes" rule), so with
    ``relocate`` the agent moves the processes of its own cgroup into a leaf
    child, as systemd expects of a delegated service. A configured parent is
    never rearranged. Side effects otherwise: one probe child, made and
    removed, and ``+cpu +memory`` in the parent's ``cgroup.subtree_control``.
    """
    own = parent is None
    if parent is None:
        found = own_cgroup(mountinfo, proc_cgroup)
        if isinstance(found, str):
            return _fallback(found)
        parent = found
    elif not (parent / "cgroup.controllers").is_file():
        return _fallback(f"{parent} is not a cgroup v2 directory (no cgroup.controllers)")
    available = _read(parent / "cgroup.controllers").split()
    missing = [c for c in REQUIRED_CONTROLLERS if c not in available]
    if missing:
        return _fallback(
            f"controller(s) {', '.join(missing)} not available in {parent} "
            f"(cgroup.controllers: {' '.join(available) or 'empty'})"
        )
    problem = _probe_child(parent) or _enable_controllers(parent, relocate=own and relocate)
    if problem:
        return _fallback(problem)
    return LimitSupport(
        LimitMode.CGROUP_V2, f"cgroup v2: cpu and memory delegated at {parent}", parent
    )


def cgroup2_mounts(mountinfo: Path = MOUNTINFO) -> list[Path]:
    """Mount points of cgroup v2 hierarchies (``/sys/fs/cgroup`` on a unified
    host, ``/sys/fs/cgroup/unified`` on a hybrid one)."""
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return []
    mounts: list[Path] = []
    for line in lines:
        fields, _, tail = line.partition(" - ")
        parts = fields.split()
        if tail.split()[:1] == ["cgroup2"] and len(parts) >= 5:
            mounts.append(Path(_unescape(parts[4])))
    return mounts


def _unescape(text: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def own_cgroup(mountinfo: Path = MOUNTINFO, proc_cgroup: Path = PROC_SELF_CGROUP) -> Path | str:
    """This process's cgroup v2 directory, or why there is none."""
    mounts = cgroup2_mounts(mountinfo)
    if not mounts:
        return "no cgroup v2 hierarchy is mounted (cgroup v1 only)"
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError as exc:
        return f"cannot read {proc_cgroup}: {exc.strerror}"
    path = next((line[3:] for line in lines if line.startswith("0::")), None)
    if path is None:
        return "this process is in no cgroup v2 hierarchy"
    for mount in mounts:
        candidate = mount / path.lstrip("/")
        if candidate.is_dir():
            return candidate
    shown = ", ".join(str(m) for m in mounts)
    return f"own cgroup {path} is not visible under {shown}"


def _probe_child(parent: Path) -> str | None:
    probe = parent / f"apportion-probe-{os.getpid()}"
    try:
        probe.mkdir()
    except OSError as exc:
        return f"cannot create a cgroup under {parent}: {exc.strerror}"
    try:
        probe.rmdir()
    except OSError as exc:
        return f"cannot remove probe cgroup {probe}: {exc.strerror}"
    return None


def _enable_controllers(parent: Path, *, relocate: bool) -> str | None:
    enabled = _read(parent / "cgroup.subtree_control").split()
    need = [c for c in REQUIRED_CONTROLLERS if c not in enabled]
    if not need:
        return None
    text = " ".join(f"+{c}" for c in need)
    try:
        _write(parent / "cgroup.subtree_control", text)
        return None
    except OSError as exc:
        if exc.errno != errno.EBUSY or not relocate:
            return f"cannot enable {', '.join(need)} in {parent}: {exc.strerror}"
    try:
        move_processes(parent, parent / AGENT_LEAF)
        _write(parent / "cgroup.subtree_control", text)
    except OSError as exc:
        return f"cannot enable {', '.join(need)} in {parent} after moving its processes: {exc}"
    return None


def move_processes(source: Path, leaf: Path) -> list[int]:
    """Move every process of cgroup ``source`` into ``leaf`` (created if
    needed); returns the pids moved. Processes that exit meanwhile are skipped."""
    leaf.mkdir(exist_ok=True)
    moved: list[int] = []
    for pid in _pids(source):
        try:
            _write(leaf / "cgroup.procs", str(pid))
        except ProcessLookupError:
            continue
        moved.append(pid)
    return moved


# ---------------------------------------------------------------- task cgroups


def create_task_cgroup(
    name: str, cpu_millicores: int | None, memory_bytes: int | None, *, parent: Path
) -> Path:
    """Make ``<parent>/task-<name>`` with ``cpu.max`` and ``memory.max`` set;
    ``None`` or 0 leaves that resource unlimited. The cgroup is removed again
    if a limit cannot be written, so no half-limited task can start in it."""
    if not _TASK_NAME.match(name):
        raise InvalidInput(
            f"task cgroup name {name!r}: use 1-128 letters, digits, '.', '_' or '-'",
            field="name",
        )
    path = parent / f"{TASK_PREFIX}{name}"
    path.mkdir()
    try:
        _write(path / "cpu.max", cpu_max(cpu_millicores))
        _write(path / "memory.max", str(memory_bytes) if memory_bytes else "max")
    except OSError:
        path.rmdir()
        raise
    # Without these the limit would spill into swap, and an OOM kill would
    # take one process and leave the rest of the task half-alive.
    _write_if_present(path / "memory.swap.max", "0")
    _write_if_present(path / "memory.oom.group", "1")
    return path


def create_tracking_cgroup(name: str, *, parent: Path) -> Path:
    """Make ``<parent>/task-<name>`` with no limits: a cgroup that holds
    the task's device program and lets the whole task be killed at once,
    on hosts whose cpu and memory controllers are not on cgroup v2."""
    if not _TASK_NAME.match(name):
        raise InvalidInput(
            f"task cgroup name {name!r}: use 1-128 letters, digits, '.', '_' or '-'",
            field="name",
        )
    path = parent / f"{TASK_PREFIX}{name}"
    path.mkdir()
    return path


def cpu_max(cpu_millicores: int | None, period_us: int = CPU_PERIOD_US) -> str:
    """The ``cpu.max`` line for a grant: 1500m -> "150000 100000"."""
    if not cpu_millicores:
        return f"max {period_us}"
    quota = max(MIN_CPU_QUOTA_US, cpu_millicores * period_us // 1000)
    return f"{quota} {period_us}"


def add_pid(path: Path, pid: int) -> None:
    """Move process ``pid`` (not its existing children) into cgroup ``path``.
    Prefer ``task_preexec(path)``, which enters the cgroup before ``exec``
    so no child the task forks early can escape."""
    _write(path / "cgroup.procs", str(pid))


def remove(path: Path, *, timeout_s: float = 5.0) -> None:
    """Kill everything in cgroup ``path`` (and any cgroups the task made
    under it), then remove it. Missing cgroups are fine: removal is idempotent."""
    if not path.is_dir():
        return
    for child in sorted((p for p in path.iterdir() if p.is_dir()), reverse=True):
        remove(child, timeout_s=timeout_s)
    _kill_all(path)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            # EBUSY until the kernel has finished tearing the killed
            # processes down; give it the timeout, then report.
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
        time.sleep(0.01)


def _kill_all(path: Path) -> None:
    if (path / "cgroup.kill").exists():  # Linux 5.14+: one atomic write
        _write(path / "cgroup.kill", "1")
        return
    for pid in _pids(path):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def cgroup_memory(path: Path) -> dict[str, int | None]:
    """Memory in use, the peak (Linux 5.19+) and the OOM kills of a task
    cgroup, so the agent can say a task died for exceeding its memory."""
    events = dict(
        line.split(maxsplit=1) for line in _read(path / "memory.events").splitlines() if line
    )
    current, peak = _read(path / "memory.current"), _read(path / "memory.peak")
    return {
        "current": int(current) if current.isdigit() else None,
        "peak": int(peak) if peak.isdigit() else None,
        "oom_kills": int(events["oom_kill"]) if "oom_kill" in events else None,
    }


def _pids(cgroup: Path) -> list[int]:
    return [int(line) for line in _read(cgroup / "cgroup.procs").split()]


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _write(path: Path, text: str) -> None:
    # cgroupfs takes one value per write(2); a buffered text file could split
    # or merge writes, so write the bytes in one call. No O_CREAT: a missing
    # interface file must fail as "No such file", not "Permission denied".
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _write_if_present(path: Path, text: str) -> None:
    # Optional hardening: the limit itself is already set when this fails.
    if path.exists():
        with contextlib.suppress(OSError):
            _write(path, text)


# ---------------------------------------------------------------- process start


def task_preexec(cgroup: Path | None = None) -> Callable[[], None]:
    """``preexec_fn`` for a task: its own session (so the watchdog or a
    cancel can kill the whole tree by process group), no core dumps, and,
    in cgroup mode, entry into the task's cgroup before ``exec``.

    Only raw system calls run in the child: after ``fork`` in a threaded
    agent, anything that takes a Python-level lock could deadlock."""
    procs = os.fsencode(cgroup / "cgroup.procs") if cgroup is not None else None

    def preexec() -> None:
        os.setsid()
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if procs is not None:
            fd = os.open(procs, os.O_WRONLY)
            try:
                os.write(fd, b"0")  # "0" means the writing process itself
            finally:
                os.close(fd)

    return preexec


# ---------------------------------------------------------------- watchdog


@dataclass(frozen=True, slots=True)
class Overrun:
    """A task that went over its memory grant: ``killed`` is False when it
    exited on its own before the kill landed."""

    task: str
    pid: int
    limit: int
    peak_rss: int
    killed: bool


@dataclass(slots=True)
class _Watched:
    process: psutil.Process
    limit: int
    peak: int = 0


class MemoryWatchdog:
    """Polls each watched task's process tree and kills a task whose total
    RSS exceeds its grant (the ``rlimit_watchdog`` mode's memory limit).

    RSS counts pages shared between processes of a tree once per process, so
    a tree of forked workers can read higher than its real use; that errs
    toward protecting the node. Enforcement is as prompt as the poll interval.
    """

    def __init__(self, *, kill: bool = True) -> None:
        self._kill = kill
        self._tasks: dict[str, _Watched] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, task: str, pid: int, memory_bytes: int) -> None:
        """Start watching ``pid`` (and its descendants) under ``task``. Taking
        the ``psutil.Process`` now guards against the pid being reused later."""
        process = psutil.Process(pid)
        with self._lock:
            self._tasks[task] = _Watched(process, memory_bytes)

    def forget(self, task: str) -> int | None:
        """Stop watching; returns the task's peak RSS seen, if it was watched."""
        with self._lock:
            watched = self._tasks.pop(task, None)
        return watched.peak if watched else None

    def peak(self, task: str) -> int | None:
        with self._lock:
            watched = self._tasks.get(task)
        return watched.peak if watched else None

    def check(self) -> list[Overrun]:
        """One poll over every task; overrunning tasks are killed (unless the
        watchdog was made with ``kill=False``) and stop being watched."""
        with self._lock:
            tasks = list(self._tasks.items())
        found: list[Overrun] = []
        for task, watched in tasks:
            rss = tree_rss(watched.process)
            watched.peak = max(watched.peak, rss)
            if rss <= watched.limit:
                continue
            killed = kill_tree(watched.process) if self._kill else False
            found.append(Overrun(task, watched.process.pid, watched.limit, watched.peak, killed))
            with self._lock:
                self._tasks.pop(task, None)
        return found

    def start(
        self, interval_s: float = 1.0, on_overrun: Callable[[Overrun], None] | None = None
    ) -> None:
        """Poll in a daemon thread until ``stop``."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, args=(interval_s, on_overrun), name="memory-watchdog", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self, interval_s: float, on_overrun: Callable[[Overrun], None] | None) -> None:
        while not self._stop.wait(interval_s):
            for overrun in self.check():
                if on_overrun is not None:
                    on_overrun(overrun)


def tree_rss(process: psutil.Process) -> int:
    """Resident memory of a process and all its descendants, in bytes."""
    try:
        members = [process, *process.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for member in members:
        try:
            total += int(member.memory_info().rss)
        except psutil.Error:  # exited, zombie, or not ours to read
            continue
    return total


def kill_tree(process: psutil.Process) -> bool:
    """SIGKILL a process, its descendants and, if it leads a session (as
    ``task_preexec`` makes it), its process group, which also reaches
    descendants that were orphaned and re-parented. True if anything died."""
    try:
        members = [process, *process.children(recursive=True)]
    except psutil.Error:
        return False
    killed = _kill_each(members)
    try:
        if process.is_running() and os.getpgid(process.pid) == process.pid:
            os.killpg(process.pid, signal.SIGKILL)
            killed = True
    except (ProcessLookupError, PermissionError):
        pass
    return killed


def _kill_each(members: Iterable[psutil.Process]) -> bool:
    killed = False
    for member in members:
        try:
            member.kill()  # psutil checks the pid still names this process
            killed = True
        except psutil.Error:
            continue
    return killed
