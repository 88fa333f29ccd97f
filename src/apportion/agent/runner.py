"""Running tasks as processes on this node: start, watch, stop, recover.

Each task has two directories. ``<work_dir>/tasks/<task id>/`` is the
agent's (0700, files 0600): the task's record (``task.json``, a journal the
shell shim the command runs under adds the exit status to: ``record.py``)
and its logs (``stdout.log``, ``stderr.log``, which the task writes only
through the descriptors it is started with). ``<sandbox>/<task id>/`` is the
task's (0700, owned by the uid it runs as, in a directory tasks can search
but not list): its working directory, ``checkpoint/``, a resumed checkpoint
(``resume/``) and the guard's usage file. The agent reads from the sandbox
only through ``checkpoint.pack`` and ``isolation.read_task_file``, which
follow no link a task may have planted (see ``isolation.py`` for who a task
runs as). The record is what lets a restarted agent adopt processes it did
not start and learn how the ones that ended while it was away ended: the
processes outlive the agent on purpose, so restarting an agent never stops
work.

A task runs in its own session, so its whole process group can be signalled
and killed; with cgroup v2 it also gets its own cgroup with ``cpu.max`` and
``memory.max``. Without cgroup v2 a ``MemoryWatchdog`` polls each task's
tree and the runner kills a task that exceeds its memory grant.

Exits are noticed through a pidfd (``pidfd_open``) on the event loop, so a
process that ends is seen at once, whether or not it is our child.

What the runner knows of each task is a ``LocalTask`` (``local_task.py``);
the system calls on a task's process (start under the shim, reap, read its
exit code) are in ``processes.py``; its directories and logs, made new or
handed on from a task that left them empty, in ``task_dirs.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import psutil
import structlog

from apportion.agent import checkpoint, limits, processes, record
from apportion.agent.gpu_isolation import (
    ENV_ONLY,
    GpuIsolation,
    GpuMode,
    attach_device_filter,
    granted_minors,
)
from apportion.agent.isolation import (
    SHARED,
    Identities,
    Isolation,
    IsolationError,
    make_sandbox_root,
    read_task_file,
)
from apportion.agent.limits import LimitMode, LimitSupport, MemoryWatchdog
from apportion.agent.local_task import LocalTask
from apportion.agent.protocol import Assignment, record_of, share_parents, task_env
from apportion.agent.record import RECORD
from apportion.agent.task_dirs import REPORTED, TaskDirs
from apportion.core.resources import format_human

log = structlog.get_logger(__name__)

REPORT = "report.json"
POLL_FALLBACK_S = 0.2
USAGE_FILE = "usage.json"
MAX_USAGE_FILE = 64 << 10

ExitCallback = Callable[[LocalTask], None]


class Runner:
    """Starts and stops this node's task processes; calls ``on_exit`` once
    for every task that ends (or is found ended after a restart)."""

    def __init__(self, work_dir: Path, node: str, support: LimitSupport, on_exit: ExitCallback,
                 *, watchdog_s: float = 1.0, isolation: Isolation = SHARED,
                 gpu: GpuIsolation = ENV_ONLY, sandbox_root: Path | None = None,
                 gpu_minors: Mapping[str, int] | None = None, fence_gpus: bool = False) -> None:
        self.work_dir = work_dir
        self.tasks_dir = work_dir / "tasks"
        self.tasks_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.sandbox_root = sandbox_root or work_dir / "sandbox"
        make_sandbox_root(self.sandbox_root, isolation)
        self.node = node
        self.support = support
        self.on_exit = on_exit
        self.watchdog_s = watchdog_s
        self.isolation = isolation
        self.identities = Identities(isolation)
        self.gpu = gpu
        self.gpu_minors: dict[str, int] = dict(gpu_minors or {})
        """The node's GPUs (id -> device minor)."""
        self.fence_gpus = fence_gpus or bool(self.gpu_minors)
        """Whether the node has GPUs to keep tasks from (discovered, or
        device nodes without NVML to discover them)."""
        self.tasks: dict[str, LocalTask] = {}
        self.dirs = TaskDirs(self.tasks_dir, self.sandbox_root)
        """Makes and retires the tasks' directories and logs."""
        self._watchdog = MemoryWatchdog(kill=False)
        self._watching: asyncio.Task[None] | None = None
        self._environ = dict(os.environ)
        """The agent's environment, the base of every task's (``task_env``),
        read once: nothing changes it after start (its secrets are gone
        before: ``credentials.take_token``), and ``os.environ`` decodes each
        name and value again at every read (72 decodes a task)."""

    # -- lifecycle ----------------------------------------------------------

    def open(self) -> list[LocalTask]:
        """Adopt the processes a previous agent left running; returns the
        tasks that ended unreported (their exits must still be sent)."""
        loop = asyncio.get_running_loop()
        if self.support.mode is LimitMode.RLIMIT_WATCHDOG:
            self._watching = loop.create_task(self._watch_memory())
        self.dirs.load()
        ended = []
        for path in sorted(self.tasks_dir.glob(f"*/{RECORD}")):
            if (path.parent / REPORTED).exists():
                continue
            task = self._recover(path.parent)
            if task is not None and task.state == "exited":
                ended.append(task)
        return ended

    def close(self) -> None:
        if self._watching is not None:
            self._watching.cancel()
        for task in self.tasks.values():
            self._unwatch(task)

    def known(self, task_id: str) -> bool:
        """Whether this node ever took the task (a task never runs twice)."""
        return task_id in self.tasks or self.dirs.known(task_id)

    def running(self) -> list[LocalTask]:
        return [t for t in self.tasks.values() if t.state != "exited"]

    # -- start --------------------------------------------------------------

    def prepare(self, assignment: Assignment) -> LocalTask:
        """Make the task's directories and record before anything runs."""
        task_dir = self.dirs.make_records(assignment.id)
        task = LocalTask(assignment, task_dir, self.sandbox_root / assignment.id)
        task.times["received_at"] = time.time()
        self.tasks[assignment.id] = task
        try:
            task.identity = self.identities.take(assignment.id)
            self.dirs.make_sandbox(task)
        except (OSError, IsolationError) as exc:
            task.unprepared = f"could not prepare: {exc}"
        identity = task.identity
        record.create(task_dir, {
            "assignment": record_of(assignment),
            "sandbox": str(task.sandbox) if task.sandbox else None,
            "uid": identity.uid if identity else None,
            "gid": identity.gid if identity else None, **self._changes(task)})
        return task

    def spawn(self, task: LocalTask, *, resumed: bool = False) -> None:
        """Start the task's command; an exit is reported through ``on_exit``."""
        if task.unprepared is not None:
            self._failed_to_start(task, task.unprepared)
            return
        a = task.assignment
        env = self._env(task, resumed)
        try:
            task.cgroup = self._cgroup(a)
            out, err = self.dirs.open_logs(task)
            try:
                task.popen = processes.popen([*self._prefix(task), *a.command], task.home, env,
                                              out, err, task.cgroup, task.dir / RECORD)
            finally:
                os.close(err)
                os.close(out)
        except (OSError, ValueError) as exc:
            self._failed_to_start(task, f"could not start: {exc}")
            return
        task.pid = task.popen.pid
        task.create_time = processes.create_time(task.pid)
        task.state = "running"
        task.times["started_at"] = time.time()
        self._save(task)
        self._watch(task)
        memory = a.resources_base.get("memory")
        if memory and self.support.mode is not LimitMode.CGROUP_V2:
            with contextlib.suppress(psutil.Error):
                self._watchdog.watch(task.id, task.pid, memory)

    def _env(self, task: LocalTask, resumed: bool) -> dict[str, str]:
        env = task_env(task.assignment, self.node, task.home, task.checkpoint_dir,
                       task.resume_dir if resumed else None, self._environ)
        if task.identity is not None:
            # The agent's HOME is not the task's to read; its sandbox is.
            name = task.identity.name or str(task.identity.uid)
            env.update({"HOME": str(task.home), "USER": name, "LOGNAME": name})
        return env

    def _prefix(self, task: LocalTask) -> list[str]:
        """What runs before the command: hiding the GPUs not granted, then
        dropping to the task's uid."""
        prefix: list[str] = []
        if self.gpu.mode is GpuMode.MOUNT_NAMESPACE and self.fence_gpus:
            prefix += self.gpu.hide_prefix(self._minors(task.assignment))
        if task.identity is not None:
            assert self.isolation.setpriv is not None
            prefix += task.identity.prefix(self.isolation.setpriv)
        return prefix

    def _minors(self, a: Assignment) -> list[int]:
        # A share of a GPU needs that GPU's node as much as a whole one does.
        return granted_minors([*a.devices.get("gpu", []), *share_parents(a)], self.gpu_minors)

    def _cgroup(self, a: Assignment) -> Path | None:
        """The task's cgroup: with its limits (cgroup v2 limit mode), or only
        to hold its device program; None when there is neither."""
        fence = self.gpu.mode is GpuMode.CGROUP_DEVICES and self.fence_gpus
        if self.support.mode is LimitMode.CGROUP_V2 and self.support.parent is not None:
            path = limits.create_task_cgroup(a.id, a.resources_base.get("cpu"),
                                             a.resources_base.get("memory"),
                                             parent=self.support.parent)
        elif fence and self.gpu.cgroup_parent is not None:
            path = limits.create_tracking_cgroup(a.id, parent=self.gpu.cgroup_parent)
        else:
            return None
        if fence:
            try:
                attach_device_filter(path, self._minors(a))
            except OSError:
                limits.remove(path)
                raise
        return path

    def _failed_to_start(self, task: LocalTask, reason: str) -> None:
        self.identities.release(task.id)
        task.reason = reason[:500]
        task.exit_code = None
        task.state = "exited"
        task.times["exited_at"] = time.time()
        self._save(task)
        asyncio.get_running_loop().call_soon(self.on_exit, task)

    # -- stop ---------------------------------------------------------------

    def stop(self, task_id: str, signal_name: str, grace_s: float, *, state: str | None = None,
             lost: bool = False) -> None:
        """Send the stop signal to the task's process group, then SIGKILL
        it after ``grace_s``. A task that never started ends at once."""
        task = self.tasks.get(task_id)
        if task is None or task.state == "exited" or task.signalled:
            return
        task.signalled, task.stop_state, task.lost = True, state, lost
        task.times["signal_at"] = time.time()
        if task.state == "prepared":
            self._never_started(task)
            return
        self._signal(task, processes.signal_named(signal_name))
        task.kill_timer = asyncio.get_running_loop().call_later(grace_s, self.kill, task_id)

    def kill(self, task_id: str) -> None:
        """SIGKILL the task's process group now (a task not started yet never will)."""
        task = self.tasks.get(task_id)
        if task is None or task.state == "exited":
            return
        task.signalled = True
        task.times.setdefault("signal_at", time.time())
        if task.state == "prepared":
            self._never_started(task)
            return
        self._signal(task, signal.SIGKILL)

    def _never_started(self, task: LocalTask) -> None:
        self.identities.release(task.id)
        task.state = "exited"
        task.times["exited_at"] = time.time()
        task.reason = task.reason or "stopped before it started"
        self._save(task)
        asyncio.get_running_loop().call_soon(self.on_exit, task)

    def _signal(self, task: LocalTask, sig: signal.Signals) -> None:
        if task.pid is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(task.pid, sig)

    # -- exits --------------------------------------------------------------

    def _watch(self, task: LocalTask) -> None:
        loop = asyncio.get_running_loop()
        assert task.pid is not None
        try:
            task.pidfd = os.pidfd_open(task.pid)
        except (OSError, AttributeError):
            loop.call_later(POLL_FALLBACK_S, self._poll, task)
            return
        loop.add_reader(task.pidfd, self._exited, task)

    def _poll(self, task: LocalTask) -> None:
        if task.state == "exited":
            return
        if processes.alive(task):
            asyncio.get_running_loop().call_later(POLL_FALLBACK_S, self._poll, task)
            return
        self._exited(task)

    def _unwatch(self, task: LocalTask) -> None:
        if task.pidfd is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(task.pidfd)
            with contextlib.suppress(OSError):
                os.close(task.pidfd)
            task.pidfd = None

    def _exited(self, task: LocalTask) -> None:
        if task.state == "exited":
            return
        self._unwatch(task)
        task.times["exited_at"] = time.time()
        code = processes.reap(task)
        task.exit_code = processes.exit_code(task.dir, code)
        if task.exit_code is None and task.reason is None:
            task.reason = "ended while the agent was away; its exit status is unknown"
        if task.kill_timer is not None:
            task.kill_timer.cancel()
        # Whatever the task left in its group (daemons, workers) goes with it:
        # its resources are about to be given to someone else.
        self._signal(task, signal.SIGKILL)
        self._watchdog.forget(task.id)
        self._cgroup_end(task)
        self.identities.release(task.id)
        task.state = "exited"
        self._save(task)
        self.on_exit(task)

    def _cgroup_end(self, task: LocalTask) -> None:
        if task.cgroup is None:
            return
        with contextlib.suppress(OSError, ValueError):
            peak = limits.cgroup_memory(task.cgroup).get("peak")
            if peak is not None:
                task.note("memory", peak)
            task.note("cpu_seconds", processes.cgroup_cpu_seconds(task.cgroup))
        with contextlib.suppress(OSError):
            kills = limits.cgroup_memory(task.cgroup).get("oom_kills")
            if kills:
                task.memory_exceeded = True
                task.reason = "memory limit exceeded (cgroup OOM kill)"
        with contextlib.suppress(OSError):
            limits.remove(task.cgroup)

    async def _watch_memory(self) -> None:
        while True:
            await asyncio.sleep(self.watchdog_s)
            for overrun in await asyncio.to_thread(self._watchdog.check):
                task = self.tasks.get(overrun.task)
                if task is None or task.state != "running":
                    continue
                # Marked before the kill, so the exit it causes is reported
                # as the memory limit, not as a plain SIGKILL.
                task.memory_exceeded = True
                task.reason = (f"memory limit exceeded: {format_human('memory', overrun.peak_rss)}"
                               f" resident, limit {format_human('memory', overrun.limit)}")
                with contextlib.suppress(psutil.Error):
                    limits.kill_tree(psutil.Process(overrun.pid))
                self._signal(task, signal.SIGKILL)

    # -- after the end ----------------------------------------------------------

    def reported(self, task: LocalTask) -> None:
        """The server has the exit: the task is done here for good (its
        files as ``TaskDirs.retire`` leaves them)."""
        self.tasks.pop(task.id, None)
        self.dirs.retire(task)

    @staticmethod
    def has_checkpoint(task: LocalTask) -> bool:
        """Whether the task saved anything to its checkpoint directory."""
        try:
            fd = os.open(task.checkpoint_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            return False
        try:
            with os.scandir(fd) as entries:
                return next(entries, None) is not None
        finally:
            os.close(fd)

    def pack_checkpoint(self, task: LocalTask, limit: int) -> checkpoint.Packed | None:
        """A new tar, in the agent's records, of the regular files and
        directories the task saved to its checkpoint directory (None: it
        saved none). Never a tar the task wrote."""
        if not self.has_checkpoint(task):
            return None
        out = task.dir / f"checkpoint-{os.urandom(6).hex()}.tar"
        packed = checkpoint.pack(task.checkpoint_dir, out, limit, owner=task.owner)
        if packed is not None and packed.skipped:
            log.warning("checkpoint_entries_left_out", task=task.id,
                        entries=packed.skipped[:20], count=len(packed.skipped))
        return packed

    def unpack_checkpoint(self, task: LocalTask, archive: Path, limit: int) -> int:
        """Write a downloaded checkpoint to the task's ``resume/`` (the
        number of files); ``checkpoint.CheckpointError`` when refused."""
        if task.resume_dir.is_symlink():
            task.resume_dir.unlink()
        elif task.resume_dir.exists():
            shutil.rmtree(task.resume_dir)
        return checkpoint.unpack(archive, task.resume_dir, limit, owner=task.owner)

    def usage(self, task: LocalTask) -> dict[str, Any]:
        """Per-task usage for the heartbeat: tree RSS, and the guard's latest
        sample when the task runs the in-process guard."""
        out: dict[str, Any] = {"id": task.id, "job_id": task.assignment.job_id,
                               "pid": task.pid, "state": task.state}
        if task.pid is not None and task.state == "running":
            with contextlib.suppress(psutil.Error):
                process = psutil.Process(task.pid)
                out["rss"] = limits.tree_rss(process)
                task.note("memory", out["rss"])
                task.note("cpu_seconds", processes.tree_cpu_seconds(process))
        data = read_task_file(task.home, USAGE_FILE, MAX_USAGE_FILE,
                              None if task.identity is None else task.identity.uid)
        if data is not None:
            with contextlib.suppress(ValueError):
                out["guard"] = json.loads(data)
        return out

    @staticmethod
    def note_gpus(task: LocalTask, gpus: list[dict[str, Any]]) -> None:
        """Fold one heartbeat's GPU readings into the task's use of its own
        GPUs (granted devices are the task's alone, so the card's memory in
        use is the task's)."""
        granted = task.assignment.devices.get("gpu") or []
        if not granted or not gpus:
            return
        uuids = {str(d.get("id")): d.get("uuid")
                 for d in task.assignment.device_info.get("gpu", [])}
        mine = [g for g in gpus
                if str(g.get("index")) in granted
                or (g.get("uuid") is not None and g.get("uuid") in uuids.values())]
        memory = [int(g["memory_used"]) for g in mine if g.get("memory_used") is not None]
        util = [float(g["utilization_percent"]) for g in mine
                if g.get("utilization_percent") is not None]
        if memory:
            task.note("gpu_memory", sum(memory))
        if util:
            task.used["gpu_util_sum"] = task.used.get("gpu_util_sum", 0.0) + sum(util) / len(util)
            task.used["gpu_util_n"] = task.used.get("gpu_util_n", 0.0) + 1

    # -- records ------------------------------------------------------------------

    @staticmethod
    def _changes(task: LocalTask) -> dict[str, Any]:
        """What a record line says of the task's progress (the assignment,
        its directory and its uid are said once, in the first line)."""
        return {"pid": task.pid, "create_time": task.create_time, "state": task.state,
                "cgroup": str(task.cgroup) if task.cgroup else None,
                "report": task.report().to_wire() if task.state == "exited" else None,
                "times": task.times, "signalled": task.signalled, "lost": task.lost,
                "stop_state": task.stop_state}

    def _save(self, task: LocalTask) -> None:
        record.append(task.dir, self._changes(task))

    def _recover(self, task_dir: Path) -> LocalTask | None:
        try:
            body = record.read(task_dir)
            assignment = Assignment.from_wire(body["assignment"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("unreadable_task_record", dir=str(task_dir), error=repr(exc))
            return None
        sandbox = Path(body["sandbox"]) if body.get("sandbox") else None
        task = LocalTask(assignment, task_dir, sandbox, pid=body.get("pid"),
                         create_time=body.get("create_time"),
                         times=dict(body.get("times") or {}))
        task.identity = self.identities.adopt(task.id, body.get("uid"), body.get("gid"))
        task.signalled = bool(body.get("signalled"))
        task.lost = bool(body.get("lost"))
        task.stop_state = body.get("stop_state")
        task.cgroup = Path(body["cgroup"]) if body.get("cgroup") else None
        self.tasks[task.id] = task
        saved = body.get("report")
        if saved is not None:
            task.state, task.exit_code = "exited", saved.get("exit_code")
            task.memory_exceeded = bool(saved.get("memory_exceeded"))
            task.reason = saved.get("reason")
        elif task.pid is not None and processes.alive(task):
            task.state = "running"
            self._watch(task)
            memory = assignment.resources_base.get("memory")
            if memory and self.support.mode is not LimitMode.CGROUP_V2:
                with contextlib.suppress(psutil.Error):
                    self._watchdog.watch(task.id, task.pid, memory)
            log.info("task_adopted", task=task.id, pid=task.pid)
        else:
            task.state = "exited"
            # Read again: the shim may have added the exit since the read above.
            task.exit_code = processes.exit_code(task_dir, None)
            task.times.setdefault("exited_at", time.time())
            if task.pid is None:
                task.reason = "the agent stopped before the task started"
            self._save(task)
        if task.state == "exited":
            self.identities.release(task.id)  # and sweep what it may have left
            if task.cgroup is not None:
                with contextlib.suppress(OSError):
                    limits.remove(task.cgroup)
        return task


# With LocalTask, which moved to local_task and is still imported from here.
__all__ = [
    "MAX_USAGE_FILE",
    "POLL_FALLBACK_S",
    "RECORD",
    "REPORT",
    "REPORTED",
    "USAGE_FILE",
    "ExitCallback",
    "LocalTask",
    "Runner",
]
