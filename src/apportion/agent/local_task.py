"""``LocalTask``: what the agent knows of one task it runs (or ran): its
assignment, its two directories, its process, its state, what it used, and
the exit report the server is sent. The ``Runner`` keeps one per task and
saves it in the task's record."""

from __future__ import annotations

import asyncio
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from apportion.agent import checkpoint
from apportion.agent.isolation import Identity
from apportion.agent.protocol import Assignment, TaskUpdate


@dataclass
class LocalTask:
    """A task this agent runs (or ran), as the agent sees it."""

    assignment: Assignment
    dir: Path
    """The agent's records of the task."""
    sandbox: Path | None = None
    """The task's own directory (``dir`` itself for tasks an older agent started)."""
    identity: Identity | None = None
    """The uid the task runs as; None: the agent's."""
    unprepared: str | None = None
    """Why the task's identity or directory could not be made (it fails to start)."""
    pid: int | None = None
    create_time: float | None = None
    popen: subprocess.Popen[bytes] | None = None
    state: str = "prepared"
    """prepared, running, exited."""
    signalled: bool = False
    stop_state: str | None = None
    lost: bool = False
    memory_exceeded: bool = False
    reason: str | None = None
    exit_code: int | None = None
    times: dict[str, float] = field(default_factory=dict)
    cgroup: Path | None = None
    kill_timer: asyncio.TimerHandle | None = None
    pidfd: int | None = None
    used: dict[str, float] = field(default_factory=dict)
    """What the task used so far: ``memory`` (peak bytes), ``cpu_seconds``,
    ``gpu_memory`` (peak bytes over its GPUs), ``gpu_util_sum`` and
    ``gpu_util_n`` (for the mean utilization in percent)."""

    @property
    def id(self) -> str:
        return self.assignment.id

    @property
    def home(self) -> Path:
        return self.sandbox or self.dir

    @property
    def checkpoint_dir(self) -> Path:
        return self.home / "checkpoint"

    @property
    def resume_dir(self) -> Path:
        return self.home / "resume"

    @property
    def owner(self) -> checkpoint.Owner | None:
        return None if self.identity is None else self.identity.owner

    def report(self) -> TaskUpdate:
        """The exit report the server is sent (and that is kept until it answers)."""
        reason = None if self.reason is None else "".join(
            c if c.isprintable() else " " for c in self.reason)[:500]
        return TaskUpdate("exited", dict(self.times), self.exit_code, self.signalled,
                          self.memory_exceeded, self.lost, reason, self.usage_summary())

    def note(self, key: str, value: float) -> None:
        """Keep the highest reading of ``key`` (a peak or a growing counter)."""
        if value >= 0 and value > self.used.get(key, -1.0):
            self.used[key] = float(value)

    def usage_summary(self) -> dict[str, float]:
        """What the exit report says the task used (only what was measured)."""
        out: dict[str, float] = {}
        for key in ("memory", "cpu_seconds", "gpu_memory"):
            if key in self.used:
                out[key] = round(self.used[key], 3)
        if self.used.get("gpu_util_n"):
            out["gpu_util"] = round(self.used["gpu_util_sum"] / self.used["gpu_util_n"], 2)
        started, ended = self.times.get("started_at"), self.times.get("exited_at")
        if started is not None and ended is not None and ended >= started:
            out["runtime_s"] = round(ended - started, 3)
        return out
