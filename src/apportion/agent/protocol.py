"""What an agent and the server exchange, and what a task is given.

The server answers an agent's long-poll with the node's desired state: every
task it must run, each with what it was granted and, when the server wants
it stopped, the end it should be brought to. ``Assignment`` is one such
task as the agent reads it; ``task_env`` is the environment its process
starts with (the contract ``apportion.guard`` reads from inside the task).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apportion.core.resources import format_quantity

API = "/api/v1/agents"
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

# The environment a task starts with.
JOB_ID_ENV = "APPORTION_JOB_ID"
TASK_ID_ENV = "APPORTION_TASK_ID"
TASK_INDEX_ENV = "APPORTION_TASK_INDEX"
ATTEMPT_ENV = "APPORTION_ATTEMPT"
ALLOCATION_ENV = "APPORTION_ALLOCATION_ID"
NODE_ENV = "APPORTION_NODE"
RESOURCES_ENV = "APPORTION_RESOURCES"
DEVICES_ENV = "APPORTION_DEVICES"
CHECKPOINT_ENV = "APPORTION_CHECKPOINT_DIR"
RESUME_ENV = "APPORTION_RESUME_FROM"
USAGE_FILE_ENV = "APPORTION_USAGE_FILE"
TASK_DIR_ENV = "APPORTION_TASK_DIR"
ARRAY_INDEX_ENV = "APPORTION_ARRAY_INDEX"
ARRAY_SIZE_ENV = "APPORTION_ARRAY_SIZE"
CUDA_ENV = "CUDA_VISIBLE_DEVICES"

EXIT_FILE = "exit_code"
SHIM = (
    # The task's command runs under this tiny shell so its exit status is
    # written to a file: an agent that restarts can still learn how a task it
    # did not start ended. The trap makes the shell outlive a stop signal
    # sent to the process group until the command itself has exited
    # (POSIX defers traps while a foreground command runs); the command gets
    # the signal's default action, as traps are reset by exec. The shell
    # enters the task's cgroup ($1, when limits use cgroup v2) before it
    # starts the command, so nothing the command forks escapes; doing this
    # here instead of in a preexec_fn lets Python spawn with vfork (0.3 ms
    # instead of 15 ms for a forked agent on the preemption path). $2 is the
    # exit file in the agent's records, which the task cannot write: when
    # the task runs as another uid, the command starts with setpriv and the
    # shim itself stays the agent's.
    'trap : TERM INT HUP QUIT USR1 USR2\n'
    'ulimit -c 0\n'
    # Files are private unless the task says otherwise (the exit file too).
    'umask 077\n'
    'if [ -n "$1" ]; then echo $$ > "$1" || exit 125; fi\n'
    'exit_file=$2\n'
    'shift 2\n'
    '"$@"\n'
    'rc=$?\n'
    # No rename for atomicity: the file is read only once the shell is gone,
    # and a rename would cost a fork and exec of mv on the stop path.
    'printf "%s\\n" "$rc" > "$exit_file"\n'
    'exit "$rc"\n'
)


@dataclass(frozen=True, slots=True)
class Stop:
    state: str
    reason: str


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
    resources_base: dict[str, int]
    devices: dict[str, list[str]]
    device_info: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    stop_signal: str = "SIGTERM"
    stop_grace_s: float = 10.0
    stop: Stop | None = None
    resume_task: str | None = None
    array: int | None = None
    """The job array's size, when the task is one of an array."""

    @classmethod
    def from_wire(cls, body: Mapping[str, Any]) -> Assignment:
        stop = body.get("stop")
        resume = body.get("resume") or {}
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
        )

    def to_dict(self) -> dict[str, Any]:
        """For the task's record on disk (what an agent restart reads back)."""
        return {"id": self.id, "job_id": self.job_id, "index": self.index,
                "attempt": self.attempt, "allocation_id": self.allocation_id,
                "command": list(self.command), "resources": self.resources,
                "resources_base": self.resources_base, "devices": self.devices,
                "device_info": self.device_info, "stop_signal": self.stop_signal,
                "stop_grace_s": self.stop_grace_s, "stop": None,
                "resume": {"task_id": self.resume_task} if self.resume_task else None,
                "array": self.array}


def safe_task_id(task_id: str) -> bool:
    """A task id the agent may use as a directory and cgroup name."""
    return bool(_SAFE_ID.match(task_id))


def visible_devices(assignment: Assignment) -> str:
    """``CUDA_VISIBLE_DEVICES``: the GPUs' UUIDs when every one has a UUID
    (stable across reboots and driver renumbering), else their indexes.
    Empty when no GPU was granted, which hides every GPU of the node."""
    info = assignment.device_info.get("gpu") or []
    uuids = [d.get("uuid") for d in info]
    if info and all(uuids):
        return ",".join(str(u) for u in uuids)
    return ",".join(assignment.devices.get("gpu", []))


def devices_json(assignment: Assignment) -> str:
    """``APPORTION_DEVICES``: every granted device with what is known of it."""
    out: dict[str, list[dict[str, Any]]] = {}
    for resource, ids in assignment.devices.items():
        info = {str(d.get("id")): d for d in assignment.device_info.get(resource, [])}
        items = []
        for device_id in ids:
            known = info.get(device_id, {})
            item: dict[str, Any] = {"id": device_id}
            if known.get("uuid"):
                item["uuid"] = known["uuid"]
            if known.get("model"):
                item["model"] = known["model"]
            if known.get("memory") is not None:
                item["memory"] = format_quantity("memory", int(known["memory"]))
            items.append(item)
        out[resource] = items
    return json.dumps(out, separators=(",", ":"))


def task_env(assignment: Assignment, node: str, task_dir: Path, checkpoint_dir: Path,
             resume_dir: Path | None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a task's process starts with."""
    # The agent's own settings (its token above all) are not the task's.
    env = {k: v for k, v in (os.environ if base is None else base).items()
           if not k.startswith("APPORTION_")}
    env.update({
        JOB_ID_ENV: assignment.job_id,
        TASK_ID_ENV: assignment.id,
        TASK_INDEX_ENV: str(assignment.index),
        ATTEMPT_ENV: str(assignment.attempt),
        ALLOCATION_ENV: assignment.allocation_id,
        NODE_ENV: node,
        RESOURCES_ENV: json.dumps(assignment.resources, separators=(",", ":")),
        DEVICES_ENV: devices_json(assignment),
        CUDA_ENV: visible_devices(assignment),
        CHECKPOINT_ENV: str(checkpoint_dir),
        USAGE_FILE_ENV: str(task_dir / "usage.json"),
        TASK_DIR_ENV: str(task_dir),
    })
    if assignment.array is not None:
        env[ARRAY_INDEX_ENV] = str(assignment.index)
        env[ARRAY_SIZE_ENV] = str(assignment.array)
    if resume_dir is not None:
        env[RESUME_ENV] = str(resume_dir)
    else:
        env.pop(RESUME_ENV, None)
    return env
