"""Records: the stored shape of jobs, tasks, queues, agents' sessions, usage,
tokens and events, as plain values every layer may pass around.

The store reads and writes them; services decide with them; the API renders
them. They hold no behaviour and do no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class QueueRow:
    name: str
    quota: dict[str, int]
    weight: float
    min_priority: int | None
    max_priority: int | None
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class JobRow:
    id: str
    name: str | None
    owner: str | None
    queue: str
    priority: int
    state: str
    spec: dict[str, Any]
    submit_time: float
    started_at: float | None
    ended_at: float | None
    reason: str | None
    exit_code: int | None
    attempts: int
    preemptions: int
    not_before: float | None = None
    """Restart backoff: the job is not placed again before then."""
    tasks_active: int = 0
    tasks_succeeded: int = 0
    task_failures: int = 0
    """Tasks that failed or were lost, over all attempts."""


@dataclass(frozen=True, slots=True)
class TaskRow:
    id: str
    job_id: str
    index: int
    attempt: int
    node: str
    allocation_id: str
    state: str
    exit_code: int | None
    reason: str | None
    created_at: float
    started_at: float | None
    ended_at: float | None
    checkpoint: str | None = None
    """Where the checkpoint this attempt left is kept (a path under the
    server's checkpoint store), if it left one."""
    stop_state: str | None = None
    """The end the server asked the agent to bring this task to (cancelled,
    preempted, failed), while the task still runs."""
    stop_reason: str | None = None
    epoch: int | None = None
    """The leader epoch that placed this attempt."""


@dataclass(frozen=True, slots=True)
class SessionRow:
    node: str
    agent_id: str
    heartbeat_s: float
    stop_after_s: float
    server_id: str | None
    registered_at: float
    last_seen: float
    heartbeat_at: float | None
    usage: dict[str, Any] | None
    tasks: list[dict[str, Any]] | None
    rescans: int
    drain_deadline: float | None
    prior_state: str | None


@dataclass(frozen=True, slots=True)
class UsageRow:
    task_id: str
    job_id: str
    name: str
    owner: str
    queue: str
    command: str | None
    state: str
    requested: dict[str, int]
    used: dict[str, int]
    started_at: float | None
    finished_at: float


@dataclass(frozen=True, slots=True)
class TokenRecord:
    id: str
    name: str
    role: str
    created_at: float
    expires_at: float | None = None
    """When a dashboard session's token stops working; None: never."""


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    kind: str
    subject: str
    origin: str
    data: dict[str, Any]
    at: float
