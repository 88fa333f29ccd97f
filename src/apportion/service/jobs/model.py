"""A job's rules: its run policy, the states it moves through, and what
happens to it when one of its tasks ends.

Everything here is pure: the transitions in ``transitions.py`` read a job's
row (with its task counters) inside their transaction, ask this module what
follows, and write it.
"""

from __future__ import annotations

import math
import os
import shlex
import signal
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from apportion.core.model import ReleaseReason
from apportion.core.records import JobRow, TaskRow, UsageRow
from apportion.core.scheduling import Job, JobState
from apportion.exceptions import InvalidInput
from apportion.service.job_specs import job_from_spec, parse_duration

JOB_LABEL = "apportion.job"
TASK_LABEL = "apportion.task"
LEASE_QUEUE = "(allocations)"
"""The queue a plain allocation (no job) counts in; no named queue can be called so."""
DEFAULT_QUEUE = "default"
WAITING = (JobState.PENDING.value, JobState.PREEMPTED.value)
LIVE = (*WAITING, JobState.SCHEDULED.value, JobState.RUNNING.value)
TERMINAL_JOB = (JobState.SUCCEEDED.value, JobState.FAILED.value, JobState.CANCELLED.value)
ACTIVE_TASK = ("scheduled", "starting", "running")
TASK_ENDS = ("succeeded", "failed", "cancelled", "preempted", "lost")
MAX_BACKOFF_S = 300.0
RELEASE_FOR = {
    "succeeded": ReleaseReason.COMPLETED,
    "failed": ReleaseReason.FAILED,
    "cancelled": ReleaseReason.CANCELLED,
    "preempted": ReleaseReason.PREEMPTED,
    "lost": ReleaseReason.NODE_LOST,
}
PROGRESS = {"scheduled": 0, "starting": 1, "running": 2}


@dataclass(frozen=True, slots=True)
class RunPolicy:
    """How a job's processes are restarted and stopped (from its spec)."""

    restart: str = "never"
    max_retries: int = 0
    backoff_s: float = 1.0
    stop_signal: str = "SIGTERM"
    stop_grace_s: float = 10.0

    @classmethod
    def of(cls, spec: Mapping[str, Any]) -> RunPolicy:
        restart = spec.get("restart") or {}
        policy = str(restart.get("policy", "never"))
        if policy not in ("never", "on-failure"):
            raise InvalidInput("restart.policy: use never or on-failure", field="restart.policy")
        name = str(spec.get("stop_signal") or "SIGTERM").upper()
        name = name if name.startswith("SIG") else "SIG" + name
        if name not in signal.Signals.__members__:
            raise InvalidInput(f"stop_signal: {name} is not a signal", field="stop_signal")
        default = 3 if policy == "on-failure" else 0
        return cls(
            policy,
            int(restart.get("max_retries", default)),
            parse_duration(restart.get("backoff"), "restart.backoff") or 1.0,
            name,
            parse_duration(spec.get("stop_grace"), "stop_grace") or 10.0,
        )

    def backoff(self, retry: int) -> float:
        return float(min(MAX_BACKOFF_S, self.backoff_s * 2 ** max(0, retry - 1)))


@dataclass(frozen=True, slots=True)
class TaskReport:
    """What an agent says about one of its tasks."""

    state: str
    """``starting``, ``running`` or ``exited``."""
    exit_code: int | None = None
    signalled: bool = False
    """The agent signalled the process (a stop the server asked for)."""
    memory_exceeded: bool = False
    lost: bool = False
    """The agent stopped it on its own, cut off from the server too long."""
    reason: str | None = None
    checkpoint: str | None = None
    times: Mapping[str, float] = field(default_factory=dict)
    usage: Mapping[str, float] = field(default_factory=dict)
    """What the task used, measured by the agent (exit reports only)."""


def unit_job_id(unit_id: str) -> str:
    return unit_id.split("#", 1)[0]


def single_unit(job: Job) -> bool:
    """Placed as one unit (a gang, or one task) rather than task by task."""
    return job.gang or job.task_count == 1


def unit_id_of(job: Job, index: int) -> str:
    """The unit that task ``index`` of ``job`` belongs to."""
    return job.id if single_unit(job) else f"{job.id}#{index}"


def is_ending(row: JobRow) -> bool:
    """Cancelled or failed already, while its last processes stop."""
    return row.state in TERMINAL_JOB


def is_live(row: JobRow) -> bool:
    """Waiting, running, or still stopping its last processes."""
    return row.state in LIVE or row.tasks_active > 0


def job_of(row: JobRow) -> Job:
    return job_from_spec(row.spec, job_id=row.id, submit_time=row.submit_time, owner=row.owner)


@dataclass(frozen=True, slots=True)
class JobChange:
    """What a job becomes after one of its tasks ended: its new row (counters
    included), whether it has finished, and which of its tasks must stop."""

    row: JobRow
    finished: bool
    stop: tuple[TaskRow, ...] = ()
    stop_state: str = "cancelled"
    stop_reason: str = ""


def after_end(job: Job, row: JobRow, ended: TaskRow, now: float,
              others: Callable[[], list[TaskRow]]) -> JobChange:
    """The job's next state once ``ended`` has ended. ``row`` is the job as
    stored before the end; ``others`` lists its other active tasks, asked
    only when they must stop (a gang's retry, a failed job)."""
    left = row.tasks_active - 1
    counted = replace(row, tasks_active=left,
                      tasks_succeeded=row.tasks_succeeded + (ended.state == "succeeded"),
                      task_failures=row.task_failures + (ended.state in ("failed", "lost")))
    if is_ending(row):
        return JobChange(replace(counted, ended_at=None if left else now), not left)
    if ended.state == "succeeded":
        if counted.tasks_succeeded >= job.task_count:
            return JobChange(replace(counted, state=JobState.SUCCEEDED.value, exit_code=0,
                                     reason="succeeded", ended_at=now), True)
        return JobChange(replace(counted, state=waiting_or(row, left, JobState.PENDING)), False)
    if ended.state == "preempted":
        unit_left = single_unit(job) and left > 0
        return JobChange(replace(
            counted, state=waiting_or(row, left, JobState.PREEMPTED), reason=ended.reason,
            preemptions=row.preemptions + (0 if unit_left else 1)), False)
    if ended.state == "cancelled":
        return JobChange(replace(counted, state=waiting_or(row, left, JobState.PENDING)), False)
    return _after_failure(job, counted, ended, now, others)


def _after_failure(job: Job, row: JobRow, ended: TaskRow, now: float,
                   others: Callable[[], list[TaskRow]]) -> JobChange:
    policy = RunPolicy.of(row.spec)
    failures = row.task_failures
    why = ended.reason or ended.state
    left = row.tasks_active
    if policy.restart == "on-failure" and failures <= policy.max_retries:
        # A gang runs together or not at all: its other members stop too.
        siblings = tuple(others()) if job.gang and left else ()
        rest = left - len(siblings)
        return JobChange(
            replace(row, state=waiting_or(row, rest, JobState.PENDING),
                    not_before=now + policy.backoff(failures),
                    reason=f"retry {failures} of {policy.max_retries} after {why}"[:512]),
            False, siblings, "cancelled", "a gang member failed")
    return JobChange(
        replace(row, state=JobState.FAILED.value, reason=why[:512],
                exit_code=ended.exit_code, ended_at=None if left else now),
        not left, tuple(others()) if left else (), "cancelled", f"job failed: {why}"[:512])


def waiting_or(row: JobRow, others: int, waiting: JobState) -> str:
    """Unchanged while other tasks run, else waiting to be placed again."""
    return row.state if others else waiting.value


def outcome(task: TaskRow, report: TaskReport) -> tuple[str, str]:
    """The end state an exit report means for ``task``."""
    if report.memory_exceeded:
        return "failed", report.reason or "memory limit exceeded"
    if report.signalled and task.stop_state:
        return task.stop_state, task.stop_reason or task.stop_state
    if report.lost:
        return "lost", report.reason or "stopped by its agent, cut off from the server"
    if report.exit_code == 0:
        return "succeeded", "exit code 0"
    if report.exit_code is None:
        return "failed", report.reason or "the process could not be started"
    return "failed", report.reason or f"exit code {report.exit_code}"


def usage_row(row: JobRow, job: Job, ended: TaskRow, times: Mapping[str, float],
              used: Mapping[str, float] | None) -> UsageRow | None:
    """The usage record of a task that ran a process and has ended: what it
    asked for (its task's resources, and the job's run time estimate) and
    what the agent measured. None when no process ran or nothing was measured."""
    if not used or "started_at" not in times:
        return None
    index = ended.index
    requested: dict[str, int] = {}
    for spec in job.tasks:
        if index < spec.count:
            requested = dict(spec.resources)
            break
        index -= spec.count
    predicted = (row.spec.get("prediction") or {}).get("filled") or {}
    if job.runtime_estimate is not None and "runtime_estimate" not in predicted:
        requested["runtime_s"] = math.ceil(job.runtime_estimate)  # the user's own estimate
    command = shlex.join(job.command) if job.command else None
    name = job.name or (os.path.basename(job.command[0]) if job.command else job.id)
    return UsageRow(ended.id, ended.job_id, name, row.owner or "", row.queue, command,
                    ended.state, requested,
                    {k: math.ceil(v) for k, v in used.items() if math.isfinite(v)},
                    times.get("started_at"), float(ended.ended_at or times.get("exited_at", 0)))


def new_job_id() -> str:
    return "j-" + uuid.uuid4().hex[:12]
