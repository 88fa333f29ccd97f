"""Answers about jobs, their tasks, logs and queues (``/api/v1/jobs``, ``/api/v1/queues``)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import ConfigDict, Field

from apportion.core.scheduling import JobState
from apportion.server.responses import Documented, Out
from apportion.server.responses.nodes import Bases, Stamp, Strings

_JOB: dict[str, Any] = {
    "id": "j-8d1e2f3a4b5c",
    "name": "train",
    "owner": "alice",
    "queue": "default",
    "priority": 0,
    "state": "running",
    "spec": {"resources": {"cpu": "2"}, "count": 1},
    "submitted_at": "2026-01-05T10:00:00Z",
    "started_at": "2026-01-05T10:00:01Z",
    "ended_at": None,
    "reason": None,
    "exit_code": None,
    "attempts": 1,
    "preemptions": 0,
    "array": None,
    "task_counts": {"total": 1, "pending": 0, "active": 1, "succeeded": 0, "failed": 0},
}
_TASK: dict[str, Any] = {
    "id": "t-1a2b3c4d5e6f",
    "index": 0,
    "attempt": 1,
    "node": "n1",
    "allocation_id": "a-5f3c9e1d2b7a",
    "state": "running",
    "exit_code": None,
    "reason": None,
    "created_at": "2026-01-05T10:00:01Z",
    "started_at": "2026-01-05T10:00:02Z",
    "ended_at": None,
}


class TaskCountsOut(Out):
    total: int
    pending: int
    active: int
    succeeded: int
    failed: int = Field(description="failed attempts")


class TaskOut(Out):
    """One attempt of one task."""

    id: str
    index: int
    attempt: int
    node: str | None
    allocation_id: str | None
    state: str
    exit_code: int | None
    reason: str | None
    created_at: Stamp
    started_at: Stamp
    ended_at: Stamp


class JobOut(Out):
    model_config = ConfigDict(json_schema_extra={"examples": [_JOB]})

    id: str
    name: str | None
    owner: str | None
    queue: str
    priority: int
    state: JobState
    spec: dict[str, Any] = Field(description="the job as submitted (and predicted)")
    submitted_at: Stamp
    started_at: Stamp
    ended_at: Stamp
    reason: str | None
    exit_code: int | None
    attempts: int
    preemptions: int
    array: int | None
    task_counts: TaskCountsOut


class JobDetailOut(JobOut):
    """A job with its task attempts, oldest first."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{**_JOB, "tasks": [_TASK], "tasks_total": 1}]}
    )

    tasks: list[TaskOut]
    tasks_total: int = Field(description="all its attempts (tasks lists at most tasks_limit)")


class JobListOut(Out):
    jobs: list[JobOut]
    count: int


class NodeVerdictOut(Out):
    node: str
    now: str = Field(
        description="fits, or the kind of the first reason against it: busy, condition, never"
    )
    ever: bool = Field(description="whether it could, once free or ready")
    reason: str | None
    code: str | None
    plugin: str | None
    never: str | None


class ExplainOut(Out):
    """Why a job waits (or where it runs), and what would let it start."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "job": "j-8d1e2f3a4b5c",
                    "status": "quota",
                    "summary": "0/2 nodes available: 2 insufficient cpu; queue tight quota: "
                    "1 of 1 cpu in use, job needs 1",
                    "nodes_total": 2,
                    "counts": {"insufficient cpu": 2},
                    "messages": {"insufficient cpu: 0 free, 1 requested": 2},
                    "hints": ["queue tight quota: 1 of 1 cpu in use, job needs 1"],
                    "earliest_start": None,
                    "waiting_for": None,
                }
            ]
        }
    )

    job: str
    status: str
    summary: str
    nodes_total: int
    counts: dict[str, int] = Field(description="nodes that cannot take it now, by reason")
    messages: dict[str, int] = Field(description="the same nodes, by message")
    hints: list[str]
    earliest_start: Stamp
    waiting_for: str | None
    nodes: list[NodeVerdictOut] = Field(default_factory=list, description="with nodes=true")
    nodes_shown: int = Field(default=0, description="with nodes=true")
    nodes_more: int = Field(default=0, description="with nodes=true: nodes not listed")
    nodes_more_counts: dict[str, int] = Field(
        default_factory=dict, description="with nodes=true: the nodes not listed, by reason"
    )


class JobLogsOut(Out):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "job": "j-8d1e2f3a4b5c",
                    "job_state": "running",
                    "exit_code": None,
                    "task": "t-1a2b3c4d5e6f",
                    "index": 0,
                    "attempt": 1,
                    "node": "n1",
                    "task_state": "running",
                    "task_active": True,
                    "stream": "stdout",
                    "offset": 0,
                    "next_offset": 6,
                    "data": "hello\n",
                    "size": 6,
                    "truncated": False,
                    "started_at": "2026-01-05T10:00:02Z",
                    "ended_at": None,
                }
            ]
        }
    )

    job: str
    job_state: JobState
    exit_code: int | None
    task: str
    index: int
    attempt: int
    node: str | None
    task_state: str
    task_active: bool
    stream: str
    offset: int
    next_offset: int = Field(description="ask from here for what follows")
    data: str
    size: int
    truncated: bool
    started_at: Stamp
    ended_at: Stamp


class QueueOut(Out):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "default",
                    "quota": {"gpu": "8"},
                    "quota_base": {"gpu": 8},
                    "weight": 1.0,
                    "min_priority": None,
                    "max_priority": None,
                    "usage": {"gpu": "2"},
                    "usage_base": {"gpu": 2},
                }
            ]
        }
    )

    name: str
    quota: Strings
    quota_base: Bases
    weight: float
    min_priority: int | None
    max_priority: int | None
    usage: Strings
    usage_base: Bases


class QueueListOut(Out):
    queues: list[QueueOut]


Job = Annotated[dict[str, Any], Documented(JobOut)]
JobDetail = Annotated[dict[str, Any], Documented(JobDetailOut)]
JobList = Annotated[dict[str, Any], Documented(JobListOut)]
Explain = Annotated[dict[str, Any], Documented(ExplainOut)]
JobLogs = Annotated[dict[str, Any], Documented(JobLogsOut)]
Queue = Annotated[dict[str, Any], Documented(QueueOut)]
QueueList = Annotated[dict[str, Any], Documented(QueueListOut)]
