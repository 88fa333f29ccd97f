"""The agent's side of the task contract: the environment a task's process
starts with (``task_env``, with the names ``apportion.protocol`` defines and
``apportion.guard`` reads from inside the task), the shim that records its
exit, and which task ids may name a directory.

The wire models (``Assignment``, ``TaskUpdate``...) are ``apportion.protocol``'s;
they are named here too for the agent's modules.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from apportion.core.gpu_shares import GPU, SHARES
from apportion.core.resources import format_quantity
from apportion.protocol import (
    ALLOCATION_ENV,
    ARRAY_INDEX_ENV,
    ARRAY_SIZE_ENV,
    ATTEMPT_ENV,
    CHECKPOINT_ENV,
    CUDA_ENV,
    DEVICES_ENV,
    JOB_ID_ENV,
    MPS_PERCENT_ENV,
    NODE_ENV,
    RESOURCES_ENV,
    RESUME_ENV,
    TASK_DIR_ENV,
    TASK_ENV_PREFIX,
    TASK_ID_ENV,
    TASK_INDEX_ENV,
    USAGE_FILE_ENV,
    Assignment,
    DesiredState,
    Stop,
    TaskUpdate,
)

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

EXIT_FILE = "exit_code"
"""Where the shim of an older agent wrote the exit status (a task it started
may be adopted by this one); the shim now appends it to the task's record."""
SHIM = (
    # The task's command runs under this tiny shell so its exit status is
    # written to the task's record: an agent that restarts can still learn how a task it
    # did not start ended. The trap makes the shell outlive a stop signal
    # sent to the process group until the command itself has exited
    # (POSIX defers traps while a foreground command runs); the command gets
    # the signal's default action, as traps are reset by exec. The shell
    # enters the task's cgroup ($1, when limits use cgroup v2) before it
    # starts the command, so nothing the command forks escapes; doing this
    # here instead of in a preexec_fn lets Python spawn with vfork (0.3 ms
    # instead of 15 ms for a forked agent on the preemption path). $2 is the
    # task's record in the agent's records, which the task cannot write: when
    # the task runs as another uid, the command starts with setpriv and the
    # shim itself stays the agent's.
    'trap : TERM INT HUP QUIT USR1 USR2\n'
    'ulimit -c 0\n'
    # Files are private unless the task says otherwise.
    'umask 077\n'
    'if [ -n "$1" ]; then echo $$ > "$1" || exit 125; fi\n'
    'record=$2\n'
    'shift 2\n'
    '"$@"\n'
    'rc=$?\n'
    # A line appended to the task's record (``record.py``), in one write and
    # starting with a newline as every appended line does (a torn line
    # before it cannot swallow it): a file of its own would cost an inode
    # per task, and a rename for atomicity a fork and exec of mv on the stop
    # path.
    'printf \'\\n{"exit_code":%s}\\n\' "$rc" >> "$record"\n'
    'exit "$rc"\n'
)


def record_of(assignment: Assignment) -> dict[str, Any]:
    """The assignment in the task's record on disk (what an agent restart
    reads back with ``Assignment.from_wire``). A stop asked for is left out:
    the server's next answer asks again if it still wants it."""
    return {**assignment.to_wire(), "stop": None}


def safe_task_id(task_id: str) -> bool:
    """A task id the agent may use as a directory and cgroup name."""
    return bool(_SAFE_ID.match(task_id))


def visible_devices(assignment: Assignment) -> str:
    """``CUDA_VISIBLE_DEVICES``: the GPUs' UUIDs when every one has a UUID
    (stable across reboots and driver renumbering), else their indexes; for
    a share of a GPU, that GPU. Empty when no GPU was granted, which hides
    every GPU of the node."""
    ids = list(assignment.devices.get(GPU, []))
    info = list(assignment.device_info.get(GPU) or [])
    for parent, entry in share_parents(assignment).items():
        ids.append(parent)
        info.append(entry)
    uuids = [d.get("uuid") for d in info]
    if info and len(info) == len(ids) and all(uuids):
        return ",".join(str(u) for u in uuids)
    return ",".join(ids)


def share_parents(assignment: Assignment) -> dict[str, dict[str, Any]]:
    """The GPUs a task holds shares of (``gpu.shares`` slots ``"1/0"``,
    ``"1/1"`` are GPU ``"1"``), each with what the server said of a slot."""
    info = {str(d.get("id")): d for d in assignment.device_info.get(SHARES, [])}
    out: dict[str, dict[str, Any]] = {}
    for slot in assignment.devices.get(SHARES, []):
        known = info.get(slot, {})
        parent = str(known.get("parent") or slot.rsplit("/", 1)[0])
        out.setdefault(parent, known)
    return out


def mps_percent(assignment: Assignment) -> int | None:
    """``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`` for a share of one GPU: the
    shares held over the shares the GPU is split in; None without shares."""
    slots = assignment.devices.get(SHARES, [])
    parents = share_parents(assignment)
    if not slots or not parents:
        return None
    split = next(iter(parents.values())).get("shares")
    if not isinstance(split, int) or split <= 0:
        return None
    per_gpu = len(slots) // len(parents)
    return max(1, min(100, 100 * per_gpu // split))


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
           if not k.startswith(TASK_ENV_PREFIX)}
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
    percent = mps_percent(assignment)
    if percent is not None:
        env[MPS_PERCENT_ENV] = str(percent)
    else:
        env.pop(MPS_PERCENT_ENV, None)
    if assignment.array is not None:
        env[ARRAY_INDEX_ENV] = str(assignment.index)
        env[ARRAY_SIZE_ENV] = str(assignment.array)
    if resume_dir is not None:
        env[RESUME_ENV] = str(resume_dir)
    else:
        env.pop(RESUME_ENV, None)
    return env


__all__ = [
    "ALLOCATION_ENV",
    "ARRAY_INDEX_ENV",
    "ARRAY_SIZE_ENV",
    "ATTEMPT_ENV",
    "CHECKPOINT_ENV",
    "CUDA_ENV",
    "DEVICES_ENV",
    "EXIT_FILE",
    "JOB_ID_ENV",
    "MPS_PERCENT_ENV",
    "NODE_ENV",
    "RESOURCES_ENV",
    "RESUME_ENV",
    "SHIM",
    "TASK_DIR_ENV",
    "TASK_ID_ENV",
    "TASK_INDEX_ENV",
    "USAGE_FILE_ENV",
    "Assignment",
    "DesiredState",
    "Stop",
    "TaskUpdate",
    "devices_json",
    "mps_percent",
    "record_of",
    "safe_task_id",
    "share_parents",
    "task_env",
    "visible_devices",
]
