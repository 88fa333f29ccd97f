"""The fence: stops an agent's tasks when the agent died and did not come back.

Task processes outlive their agent on purpose (an agent restart must not stop
work), so something must keep the promise the agent made to the server: a
node cut off for ``stop_after_disconnect`` runs nothing, because the server
then gives its tasks to other nodes. The agent starts this small process in
its own session; it watches the agent's pid, and once the agent is gone and
its last contact with the server (``<work_dir>/contact``) is older than the
limit, it kills every task process group the agent left and exits. A new
agent on the same work directory replaces the fence (``fence.pid``).

Run as ``python -m apportion.agent.fence WORK_DIR AGENT_PID AGENT_START STOP_AFTER_S``;
it imports only the standard library, psutil and ``record`` (which itself
imports only the standard library), so it starts fast.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

import psutil

from apportion.agent import record

CONTACT_FILE = "contact"
FENCE_PID_FILE = "fence.pid"
AGENT_PID_FILE = "agent.pid"
POLL_S = 0.25


def same_process(pid: int, started: float | None) -> bool:
    """``pid`` still names the process that started at ``started``."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or abs(proc.create_time() - started) < 0.01
    except psutil.Error:
        return False


def last_contact(work_dir: Path) -> float:
    try:
        return float((work_dir / CONTACT_FILE).read_text().strip())
    except (OSError, ValueError):
        return 0.0


def kill_tasks(work_dir: Path) -> list[int]:
    """SIGKILL every recorded, unreported task process group (and whatever is
    in its cgroup, which goes too); the pids killed."""
    killed = []
    for path in (work_dir / "tasks").glob(f"*/{record.RECORD}"):
        if (path.parent / "reported").exists():
            continue
        try:
            body = record.read(path.parent)
        except (OSError, ValueError):
            continue
        pid = body.get("pid")
        if isinstance(pid, int) and same_process(pid, body.get("create_time")):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
                killed.append(pid)
        if isinstance(body.get("cgroup"), str):
            remove_cgroup(Path(body["cgroup"]))
    return killed


def remove_cgroup(path: Path, timeout_s: float = 2.0) -> None:
    """Kill what is left in a task's cgroup (Linux 5.14+) and remove it, as
    ``limits.remove`` does; best effort (the fence imports no apportion code)."""
    if (path / "cgroup.kill").exists():
        with contextlib.suppress(OSError):
            (path / "cgroup.kill").write_text("1")
    deadline = time.monotonic() + timeout_s
    while path.is_dir():
        try:
            path.rmdir()
        except OSError:
            if time.monotonic() > deadline:
                return
            time.sleep(0.02)


def replaced(work_dir: Path, agent_pid: int) -> bool:
    """A newer agent took this work directory over."""
    try:
        return int((work_dir / AGENT_PID_FILE).read_text().split()[0]) != agent_pid
    except (OSError, ValueError, IndexError):
        return False


def watch(work_dir: Path, agent_pid: int, agent_start: float | None, stop_after_s: float) -> int:
    while True:
        time.sleep(POLL_S)
        if replaced(work_dir, agent_pid):
            return 0
        if same_process(agent_pid, agent_start):
            continue
        if time.time() - last_contact(work_dir) >= stop_after_s:
            kill_tasks(work_dir)
            return 0


def main(argv: list[str]) -> int:
    work_dir, agent_pid, agent_start, stop_after = argv[1:5]
    started = float(agent_start) if agent_start != "-" else None
    return watch(Path(work_dir), int(agent_pid), started, float(stop_after))


if __name__ == "__main__":  # pragma: no cover - run by the agent as a process
    sys.exit(main(sys.argv))
