"""What the server and an agent say to each other, and what a task is given:
defined once, here, for the server that renders it, the agent that reads it
and the guard that reads the task's environment.

- ``DesiredState`` is the answer to an agent's long-poll
  (``GET /api/v1/agents/{node}/assignments``): every task of the node, each an
  ``Assignment`` with what it was granted and, when the server wants it
  stopped, the end it should be brought to (``Stop``).
- ``TaskUpdate`` is what the agent says about one task (``starting``,
  ``running``, ``exited``), alone or batched.
- The ``*_ENV`` names are the environment a task starts with: the contract
  ``apportion.guard`` reads from inside the task.

A leaf on purpose: the standard library only (no pydantic, no httpx, no
other apportion module), so the CLI and the guard import it for nothing.
``to_wire`` gives the JSON object, keys in the order the wire has always had;
``from_wire`` reads one, tolerating keys an older or newer peer leaves out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# -- the task environment -------------------------------------------------------------

JOB_ID_ENV = "APPORTION_JOB_ID"
TASK_ID_ENV = "APPORTION_TASK_ID"
TASK_INDEX_ENV = "APPORTION_TASK_INDEX"
ATTEMPT_ENV = "APPORTION_ATTEMPT"
ALLOCATION_ENV = "APPORTION_ALLOCATION_ID"
NODE_ENV = "APPORTION_NODE"
RESOURCES_ENV = "APPORTION_RESOURCES"
"""JSON object of the task's allocated resources in canonical strings,
e.g. ``{"cpu": "2", "memory": "4Gi", "gpu": "1"}``."""
DEVICES_ENV = "APPORTION_DEVICES"
"""JSON object of the devices held, e.g.
``{"gpu": [{"id": "0", "uuid": "GPU-...", "model": "...", "memory": "80Gi"}]}``."""
CHECKPOINT_ENV = "APPORTION_CHECKPOINT_DIR"
RESUME_ENV = "APPORTION_RESUME_FROM"
USAGE_FILE_ENV = "APPORTION_USAGE_FILE"
TASK_DIR_ENV = "APPORTION_TASK_DIR"
ARRAY_INDEX_ENV = "APPORTION_ARRAY_INDEX"
ARRAY_SIZE_ENV = "APPORTION_ARRAY_SIZE"
CUDA_ENV = "CUDA_VISIBLE_DEVICES"
"""The granted GPUs' UUIDs (or indexes); empty hides every GPU of the node.
For a share of a GPU (``gpu.shares``), that GPU."""
MPS_PERCENT_ENV = "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"
"""Set only for a share of a GPU: 100 * shares held / shares the GPU is split
in (25 for ``gpu: 0.25``), the part of its SMs an MPS client may use."""

TASK_ENV_PREFIX = "APPORTION_"
"""An agent's own settings (its token above all) carry this prefix: none of
them reaches a task, only the names above."""


# -- the node's desired state ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stop:
    """The end the server wants a running task brought to."""

    state: str
    reason: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {"state": self.state, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class Assignment:
    """One task of the node's desired state."""

    id: str
    job_id: str
    index: int
    attempt: int
    allocation_id: str
    command: tuple[str, ...]
    resources: dict[str, str]
    """Canonical strings (what the task is told)."""
    resources_base: dict[str, int]
    """Base units (what limits are set from)."""
    devices: dict[str, list[str]]
    device_info: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    stop_signal: str = "SIGTERM"
    stop_grace_s: float = 10.0
    stop: Stop | None = None
    resume_task: str | None = None
    """The task whose checkpoint this one resumes from."""
    array: int | None = None
    """The job array's size, when the task is one of an array."""
    state: str | None = None
    """The task's state on the server (informative: the agent acts on ``stop``)."""
    created_at: float | None = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id, "job_id": self.job_id, "index": self.index, "attempt": self.attempt,
            "allocation_id": self.allocation_id, "state": self.state,
            "created_at": self.created_at, "command": list(self.command),
            "resources": self.resources, "resources_base": self.resources_base,
            "devices": self.devices, "device_info": self.device_info,
            "stop_signal": self.stop_signal, "stop_grace_s": self.stop_grace_s,
            "stop": self.stop.to_wire() if self.stop else None,
            "array": self.array,
            "resume": {"task_id": self.resume_task} if self.resume_task else None,
        }

    @classmethod
    def from_wire(cls, body: Mapping[str, Any]) -> Assignment:
        stop = body.get("stop")
        resume = body.get("resume") or {}
        created = body.get("created_at")
        return cls(
            str(body["id"]), str(body["job_id"]), int(body["index"]), int(body["attempt"]),
            str(body["allocation_id"]), tuple(str(c) for c in body["command"]),
            {str(k): str(v) for k, v in body["resources"].items()},
            {str(k): int(v) for k, v in body["resources_base"].items()},
            {str(k): [str(i) for i in v] for k, v in body["devices"].items()},
            dict(body.get("device_info") or {}),
            str(body.get("stop_signal") or "SIGTERM"),
            float(body.get("stop_grace_s") or 10.0),
            Stop(str(stop["state"]), str(stop.get("reason") or stop["state"])) if stop else None,
            str(resume["task_id"]) if resume.get("task_id") else None,
            int(body["array"]) if body.get("array") else None,
            str(body["state"]) if body.get("state") is not None else None,
            float(created) if created is not None else None,
        )


@dataclass(frozen=True, slots=True)
class DesiredState:
    """The answer to an agent's long-poll: the node's whole desired state."""

    epoch: str
    """The answering server run's; a poll that names another is answered at once."""
    seq: int
    """Grows with every change of the node's state on that server run."""
    node_state: str
    rescan: int
    """Rescans asked for so far (on this server run)."""
    tasks: tuple[Assignment, ...]

    def to_wire(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "seq": self.seq, "node_state": self.node_state,
                "rescan": self.rescan, "tasks": [a.to_wire() for a in self.tasks]}

    @classmethod
    def from_wire(cls, body: Mapping[str, Any]) -> DesiredState:
        rescan = body.get("rescan")
        return cls(str(body["epoch"]), int(body["seq"]), str(body.get("node_state") or ""),
                   rescan if isinstance(rescan, int) else -1,
                   tuple(Assignment.from_wire(t) for t in body["tasks"]))


# -- what the agent reports -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskUpdate:
    """What an agent says about one of its tasks. ``starting`` and ``running``
    carry only their times; an exit says how the task ended and, when
    measured, what it used."""

    state: str
    """starting, running, exited."""
    times: dict[str, float] = field(default_factory=dict)
    exit_code: int | None = None
    signalled: bool = False
    memory_exceeded: bool = False
    lost: bool = False
    reason: str | None = None
    usage: dict[str, float] = field(default_factory=dict)
    """memory and gpu_memory (peak bytes), cpu_seconds, gpu_util (mean
    percent), runtime_s."""
    checkpoint: bool | None = None
    """An exit's checkpoint was uploaded; None until the agent tried."""

    @property
    def exited(self) -> bool:
        return self.state == "exited"

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.state}
        if self.exited:
            out.update(exit_code=self.exit_code, signalled=self.signalled,
                       memory_exceeded=self.memory_exceeded, lost=self.lost,
                       reason=self.reason)
        out["times"] = dict(self.times)
        if self.usage:
            out["usage"] = dict(self.usage)
        if self.checkpoint is not None:
            out["checkpoint"] = self.checkpoint
        return out

    @classmethod
    def from_wire(cls, body: Mapping[str, Any]) -> TaskUpdate:
        code = body.get("exit_code")
        reason = body.get("reason")
        checkpoint = body.get("checkpoint")
        return cls(
            str(body["state"]), {str(k): float(v) for k, v in (body.get("times") or {}).items()},
            int(code) if code is not None else None, bool(body.get("signalled")),
            bool(body.get("memory_exceeded")), bool(body.get("lost")),
            str(reason) if reason is not None else None,
            {str(k): float(v) for k, v in (body.get("usage") or {}).items()},
            bool(checkpoint) if checkpoint is not None else None)
