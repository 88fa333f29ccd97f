"""What this process may use: the task's allocation when it runs as an
apportion task, otherwise what the machine has, minus a safety margin.

Task contract (set by the apportion agent; the names and their shapes are
``apportion.protocol``'s): ``APPORTION_RESOURCES``, the task's allocated
resources, and ``APPORTION_DEVICES``, the devices it holds.

Each GPU ``k`` in local order (the order ``CUDA_VISIBLE_DEVICES`` gives it,
so ``cuda:k``) gets a resource ``gpu.k.memory``; ``gpu_memory`` is their sum.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from apportion.core.resources import Unit, format_vector, parse_quantity, parse_vector, unit_of
from apportion.exceptions import ApportionError
from apportion.guard.errors import TaskEnvironmentError
from apportion.guard.nvml import AUTO, Nvml, NvmlChoice
from apportion.protocol import DEVICES_ENV, RESOURCES_ENV

DEFAULT_MARGIN = 0.10
"""Share of CPU and memory kept back from the guard: the interpreter, the
allocator's fragmentation and libraries outside the ledger's view live there."""

_CGROUP = Path("/sys/fs/cgroup")
_PROC_CGROUP = Path("/proc/self/cgroup")


def gpu_memory_name(index: int) -> str:
    """The resource holding GPU ``index``'s memory (ends in "memory": bytes)."""
    return f"gpu.{index}.memory"


@dataclass(frozen=True, slots=True)
class GpuDevice:
    """A GPU this process may use; ``index`` is its local (``cuda:N``) index."""

    index: int
    id: str
    uuid: str | None = None
    model: str | None = None
    memory: int | None = None


@dataclass(frozen=True, slots=True)
class LocalCapacity:
    """``resources`` is what the guard hands out: ``total`` less the margin."""

    resources: dict[str, int]
    total: dict[str, int]
    gpus: tuple[GpuDevice, ...] = ()
    source: str = "host"
    margin: float = DEFAULT_MARGIN
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "margin": self.margin,
            "resources": format_vector(self.resources),
            "total": format_vector(self.total),
            "gpus": [
                {"index": g.index, "id": g.id, "uuid": g.uuid, "model": g.model,
                 "memory": g.memory}
                for g in self.gpus
            ],
            "notes": list(self.notes),
        }


def discover_local_capacity(
    *,
    margin: float = DEFAULT_MARGIN,
    environ: Mapping[str, str] | None = None,
    nvml: NvmlChoice = AUTO,
) -> LocalCapacity:
    """The task's allocation when ``APPORTION_RESOURCES`` is set, else the host's."""
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"margin must be in [0, 1), got {margin}")
    env = os.environ if environ is None else environ
    if env.get(RESOURCES_ENV):
        total, gpus = task_totals(env)
        source = "task"
    else:
        total, gpus = host_totals(nvml)
        source = "host"
    return LocalCapacity(apply_margin(total, margin), total, gpus, source, margin)


def apply_margin(total: Mapping[str, int], margin: float) -> dict[str, int]:
    """Keep back ``margin`` of divisible resources; whole devices stay whole."""
    out: dict[str, int] = {}
    for name, qty in total.items():
        out[name] = qty if unit_of(name) is Unit.COUNT else int(qty * (1.0 - margin))
    return out


# -- the task's allocation ------------------------------------------------


def task_totals(env: Mapping[str, str]) -> tuple[dict[str, int], tuple[GpuDevice, ...]]:
    """Resources and GPUs from the agent's environment variables."""
    raw = _json_object(env, RESOURCES_ENV)
    try:
        resources = parse_vector(raw, RESOURCES_ENV)
    except ApportionError as exc:
        raise TaskEnvironmentError(f"{RESOURCES_ENV}: {exc.message}") from exc
    gpus = _task_gpus(env)
    known = [g.memory for g in gpus if g.memory is not None]
    for gpu in gpus:
        if gpu.memory is not None:
            resources[gpu_memory_name(gpu.index)] = gpu.memory
    if known and "gpu_memory" not in resources:
        resources["gpu_memory"] = sum(known)
    return resources, gpus


def _task_gpus(env: Mapping[str, str]) -> tuple[GpuDevice, ...]:
    if not env.get(DEVICES_ENV):
        return ()
    listed = _json_object(env, DEVICES_ENV).get("gpu", [])
    if not isinstance(listed, list):
        raise TaskEnvironmentError(f"{DEVICES_ENV}: 'gpu' must be a list of devices")
    gpus: list[GpuDevice] = []
    for index, item in enumerate(listed):
        if not isinstance(item, dict):
            raise TaskEnvironmentError(f"{DEVICES_ENV}: gpu[{index}] must be an object")
        gpus.append(_task_gpu(index, item))
    return tuple(gpus)


def _task_gpu(index: int, item: dict[str, Any]) -> GpuDevice:
    memory = None
    if item.get("memory") is not None:
        try:
            memory = parse_quantity("memory", item["memory"], f"{DEVICES_ENV}.gpu[{index}]")
        except ApportionError as exc:
            raise TaskEnvironmentError(f"{DEVICES_ENV}: {exc.message}") from exc
    model = item.get("model")
    uuid = item.get("uuid")
    return GpuDevice(
        index,
        str(item.get("id", index)),
        None if uuid is None else str(uuid),
        None if model is None else str(model),
        memory,
    )


def _json_object(env: Mapping[str, str], name: str) -> dict[str, Any]:
    try:
        value = json.loads(env[name])
    except ValueError as exc:
        raise TaskEnvironmentError(f"{name} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise TaskEnvironmentError(f"{name} must be a JSON object")
    return value


# -- the whole host -------------------------------------------------------


def host_totals(nvml: NvmlChoice = AUTO) -> tuple[dict[str, int], tuple[GpuDevice, ...]]:
    """CPU and memory of this machine (within the process's cgroup), and GPUs."""
    resources = {"cpu": _cpu_millicores(), "memory": _memory_bytes()}
    gpus = _host_gpus(nvml)
    if gpus:
        resources["gpu"] = len(gpus)
        resources["gpu_memory"] = sum(g.memory or 0 for g in gpus)
        for gpu in gpus:
            resources[gpu_memory_name(gpu.index)] = gpu.memory or 0
    return resources, gpus


def _host_gpus(nvml: NvmlChoice) -> tuple[GpuDevice, ...]:
    handle = Nvml.open(nvml)
    if handle is None:
        return ()
    return tuple(
        GpuDevice(info.index, str(info.index), info.uuid, info.name, info.memory_total)
        for info in handle.devices()
    )


def _cpu_millicores() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_value("cpu.max")
    if quota:
        parts = quota.split()
        if len(parts) == 2 and parts[0] != "max":
            # cpu.max is "<quota> <period>" in microseconds; their ratio is cores.
            limited = int(parts[0]) * 1000 // int(parts[1])
            return max(1, min(cores * 1000, limited))
    return cores * 1000


def _memory_bytes() -> int:
    total = int(psutil.virtual_memory().total)
    limit = _cgroup_value("memory.max")
    if limit and limit != "max" and limit.isdigit():
        return min(total, int(limit))
    return total


def _cgroup_value(name: str) -> str | None:
    """A cgroup v2 control file of this process's own group, if readable."""
    try:
        lines = _PROC_CGROUP.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("0::"):
            try:
                return (_CGROUP / line[3:].lstrip("/") / name).read_text().strip()
            except OSError:
                return None
    return None
