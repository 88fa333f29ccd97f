"""A task's process as the operating system sees it: started under the
shell shim in its own session, found alive (the same process, not a reused
pid) or gone, reaped with its resource use, and its exit code and CPU time
read. The ``Runner`` decides when; these functions do the system calls."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import psutil

from apportion.agent import record
from apportion.agent.local_task import LocalTask
from apportion.agent.protocol import EXIT_FILE, SHIM


def popen(command: list[str], cwd: Path, env: dict[str, str], out: int, err: int,
           cgroup: Path | None, exit_file: Path) -> subprocess.Popen[bytes]:
    """Start ``command`` under the shim, which moves it into ``cgroup`` and
    writes its exit code to ``exit_file``; ``out`` and ``err`` are its logs."""
    if not command:
        raise ValueError("the job has no command")
    procs = str(cgroup / "cgroup.procs") if cgroup is not None else ""
    # Its own session, so the whole task can be signalled and killed as a
    # process group; the shim does the rest of what task_preexec would.
    return subprocess.Popen(
        ["/bin/sh", "-c", SHIM, "apportion-task", procs, str(exit_file), *command],
        cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
        start_new_session=True, close_fds=True,
    )


def signal_named(name: str) -> signal.Signals:
    """"TERM", "sigint", "SIGUSR1" as a signal; SIGTERM for a name not known."""
    name = name.upper()
    name = name if name.startswith("SIG") else "SIG" + name
    return signal.Signals.__members__.get(name, signal.SIGTERM)


def create_time(pid: int) -> float | None:
    """When the process started (to tell it from a later one with its pid)."""
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def alive(task: LocalTask) -> bool:
    """The recorded process still runs (the same process, not a reused pid)."""
    if task.pid is None:
        return False
    try:
        proc = psutil.Process(task.pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return task.create_time is None or abs(proc.create_time() - task.create_time) < 0.01
    except psutil.Error:
        return False


def reap(task: LocalTask) -> int | None:
    """Collect our child's exit status, with its resource use: the shim
    waits for the command, so the shell's rusage holds the command's CPU time
    and the peak RSS of its largest process."""
    popen = task.popen
    if popen is None:
        return None
    if popen.returncode is None:
        try:
            # The pidfd says it is gone: this does not block.
            pid, status, rusage = os.wait4(popen.pid, 0)
        except ChildProcessError:
            return popen.poll()
        if pid == popen.pid:
            popen.returncode = os.waitstatus_to_exitcode(status)
            task.note("cpu_seconds", rusage.ru_utime + rusage.ru_stime)
            task.note("memory", rusage.ru_maxrss * 1024)  # Linux reports KiB
    return popen.returncode


def tree_cpu_seconds(process: psutil.Process) -> float:
    """CPU time of a process tree so far, counting children it has reaped."""
    total = 0.0
    try:
        members = [process, *process.children(recursive=True)]
    except psutil.Error:
        return 0.0
    for member in members:
        with contextlib.suppress(psutil.Error):
            t = member.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


def cgroup_cpu_seconds(cgroup: Path) -> float:
    """CPU time of everything that ran in the cgroup, from its ``cpu.stat``."""
    for line in (cgroup / "cpu.stat").read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            return int(value) / 1e6
    return 0.0


def exit_code(task_dir: Path, returncode: int | None) -> int | None:
    """The command's exit status: the shell's own when it exited (it exits
    with the status it records: nothing to read), else what the shim
    recorded (the task is not our child, or the shell was killed after the
    command ended), else 128 + the signal that killed the shell, else unknown."""
    if returncode is not None and returncode >= 0:
        return returncode
    recorded = _recorded_exit(task_dir)
    if recorded is not None:
        return recorded
    if returncode is None:
        return None
    return 128 - returncode


def _recorded_exit(task_dir: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        code = record.read(task_dir).get("exit_code")
        if isinstance(code, int) and not isinstance(code, bool):
            return code
    with contextlib.suppress(OSError, ValueError):  # a task an older agent started
        return int((task_dir / EXIT_FILE).read_text().strip())
    return None
