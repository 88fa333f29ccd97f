"""Answers of the agent protocol (``/api/v1/agents``): what a node's agent is told."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import ConfigDict, Field

from apportion.server.responses import Documented, Out
from apportion.server.responses.nodes import Bases, NodeOut, Strings


class RegisteredOut(Out):
    """The node as registered. Joining with a one-time join token adds the
    pool and ``agent_token``, the node's credential from then on."""

    node: NodeOut
    epoch: str = Field(description="this server run's; assignments polls name it")
    pool: str | None = Field(default=None, description="with a join token")
    agent_token: str | None = Field(default=None, description="with a join token")


class HeartbeatOut(Out):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"node_state": "ready", "epoch": "3f9a0c1b2d4e", "seq": 12, "registered": True}
            ]
        }
    )

    node_state: str
    epoch: str
    registered: bool = Field(description="false: the agent must register again")
    seq: int = Field(default=0, description="when registered: the node's state version")


class TaskAnswerOut(Out):
    """What the server makes of a task report."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"known": True, "active": False, "state": "succeeded", "reason": None}]
        }
    )

    known: bool = Field(description="false: no such task on this node; the agent drops it")
    active: bool = Field(description="whether the task should still run")
    state: str | None
    reason: str | None = Field(default=None, description="when the report ended the task")


class ReportAnswerOut(Out):
    """One report's answer in a batch: what the server made of it (as
    ``TaskAnswerOut``) or, refused alone, the error body its own call would
    have had, with that call's ``status``."""

    model_config = ConfigDict(extra="allow")

    task: str
    known: bool | None = None
    active: bool | None = None
    state: str | None = None
    reason: str | None = None
    error: str | None = Field(default=None, description="a refused report: the error code")
    message: str | None = None
    status: int | None = Field(default=None, description="a refused report: its HTTP status")


class ReportsOut(Out):
    answers: list[ReportAnswerOut] = Field(description="one per report, in order")


class StopOut(Out):
    state: str
    reason: str | None


class ResumeOut(Out):
    task_id: str


class AssignmentOut(Out):
    id: str
    job_id: str
    index: int
    attempt: int
    allocation_id: str
    state: str | None
    created_at: float | None
    command: list[str]
    resources: Strings
    resources_base: Bases
    devices: dict[str, list[str]]
    device_info: dict[str, list[dict[str, Any]]]
    stop_signal: str
    stop_grace_s: float
    stop: StopOut | None
    array: int | None
    resume: ResumeOut | None


class DesiredStateOut(Out):
    """The node's whole desired state: every task it should run or stop."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "epoch": "3f9a0c1b2d4e",
                    "seq": 12,
                    "node_state": "ready",
                    "rescan": 0,
                    "tasks": [],
                }
            ]
        }
    )

    epoch: str
    seq: int
    node_state: str
    rescan: int
    tasks: list[AssignmentOut]


class LogChunkOut(Out):
    model_config = ConfigDict(json_schema_extra={"examples": [{"size": 4096, "truncated": False}]})

    size: int = Field(description="bytes stored for the stream so far")
    truncated: bool = Field(description="the task's log limit cut this chunk")


class CheckpointOut(Out):
    checkpoint: str
    size: int


class AgentOut(Out):
    """What the server knows of a node's agent."""

    node: str
    agent_id: str
    heartbeat_s: float
    stop_after_disconnect_s: float
    silent_s: float = Field(description="seconds since it was last heard")
    down_after_s: float
    last_heartbeat: float | None = Field(description="epoch seconds")
    usage: dict[str, Any]
    tasks: list[dict[str, Any]]
    draining_until: float | None


Registered = Annotated[dict[str, Any], Documented(RegisteredOut)]
Heartbeat = Annotated[dict[str, Any], Documented(HeartbeatOut)]
TaskAnswer = Annotated[dict[str, Any], Documented(TaskAnswerOut)]
Reports = Annotated[dict[str, Any], Documented(ReportsOut)]
LogChunk = Annotated[dict[str, Any], Documented(LogChunkOut)]
Checkpoint = Annotated[dict[str, Any], Documented(CheckpointOut)]
Agent = Annotated[dict[str, Any], Documented(AgentOut)]
