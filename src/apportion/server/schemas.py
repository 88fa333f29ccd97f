"""Request bodies (pydantic, validated at the edge) and response renderers.

Responses are built as plain dicts: every quantity appears twice, as the
canonical string a person reads (``"16Gi"``) and as the integer in base units
a program computes with (``resources_base``).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
)

from apportion.core.model import Allocation, Device, Node, NodeState
from apportion.core.resources import Vector, format_quantity, format_vector
from apportion.server.memo import Memo

NODE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$"
LABEL_KEY = r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,252}$"
PRINTABLE = r"^[^\x00-\x1f\x7f]*$"

Quantity = StrictInt | StrictFloat | StrictStr
NodeName = Annotated[str, Field(pattern=NODE_NAME, description="letters, digits, '.', '_', '-'")]
LabelKey = Annotated[str, Field(pattern=LABEL_KEY)]
LabelValue = Annotated[str, Field(max_length=253, pattern=PRINTABLE)]
Text = Annotated[str, Field(min_length=1, max_length=253, pattern=PRINTABLE)]


def _storable(value: Any) -> Any:
    """Free-form JSON (specs, device attrs) must survive storing and answering:
    no lone surrogates ("\\ud800" is valid JSON but not UTF-8) and no NaN or
    Infinity (Python's parser accepts them; JSON and PostgreSQL do not)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(
                    "text must be valid Unicode (a lone surrogate such as \\ud800 is not)"
                ) from None
        elif isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"{item!r} is not a JSON number; use a finite number")
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return value


JsonValue = Annotated[Any, AfterValidator(_storable)]


def _not_a_boolean(value: Any) -> Any:
    """JSON ``true`` is not a number: pydantic would take it as 1 (a queue's
    ``max_priority: false`` became 0) where the schema says integer."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number, not {str(value).lower()}")
    return value


NUMBER = BeforeValidator(_not_a_boolean)
"""On every int and float of a request (after its limits, which then stay
in the published schema): true and false are refused, not read as 1 and 0."""

MAX_LABELS = 64
"""Labels on one node, job or allocation (a body once carried 250,000)."""
MAX_KEYS = 256
"""Keys of a free-form map (specs, device attributes, usage)."""
MAX_RESOURCES = 64
MAX_DEVICES = 1024
"""Devices of one resource on one node."""

Labels = Annotated[dict[LabelKey, LabelValue], Field(max_length=MAX_LABELS)]
Specs = Annotated[dict[LabelKey, JsonValue], Field(max_length=MAX_KEYS)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeviceIn(Strict):
    id: Annotated[str, Field(min_length=1, max_length=128, pattern=PRINTABLE)]
    model: Text | None = None
    memory: Quantity | None = None
    uuid: Text | None = None
    serial: Text | None = None
    attrs: Specs = Field(default_factory=dict)


Resources = Annotated[dict[str, Quantity], Field(max_length=MAX_RESOURCES)]
DeviceMap = Annotated[dict[str, Annotated[list[DeviceIn], Field(max_length=MAX_DEVICES)]],
                      Field(max_length=MAX_RESOURCES)]


class NodeIn(Strict):
    name: NodeName
    resources: Resources = Field(default_factory=dict)
    devices: DeviceMap = Field(default_factory=dict)
    labels: Labels = Field(default_factory=dict)
    specs: Specs = Field(default_factory=dict)
    state: NodeState = NodeState.READY


class NodeUpdate(Strict):
    """Fields left out keep their current value."""

    name: NodeName | None = None
    resources: Resources | None = None
    devices: DeviceMap | None = None
    labels: Labels | None = None
    specs: Specs | None = None
    state: NodeState | None = None


class AllocationIn(Strict):
    resources: Resources = Field(
        description='resource: quantity, e.g. {"cpu": "2", "memory": "4Gi", "gpu": 1}'
    )
    node: NodeName | None = None
    owner: Text | None = None
    labels: Labels = Field(default_factory=dict)


class TokenIn(Strict):
    name: Text
    role: Annotated[str, Field(pattern=r"^(admin|user|agent)$")]


_SECONDS: Memo[int, str] = Memo()


def iso(ts: float | None) -> str | None:
    """``datetime.fromtimestamp(ts, UTC).isoformat()`` with ``Z`` for
    ``+00:00``. The whole second's text is remembered (times answered
    together share their second: every grant answers its own) and the
    microseconds are rounded as ``fromtimestamp`` rounds them, half to even;
    the datetime was two thirds of rendering a grant."""
    if ts is None:
        return None
    fraction, whole = math.modf(ts)
    micro = round(fraction * 1e6)
    if micro >= 1_000_000:
        micro -= 1_000_000
        whole += 1.0
    elif micro < 0:
        micro += 1_000_000
        whole -= 1.0
    second = int(whole)
    head = _SECONDS.get(second, lambda: datetime.fromtimestamp(second, UTC).isoformat()[:19])
    return f"{head}.{micro:06d}Z" if micro else head + "Z"


def render_device(resource: str, device: Device, holder: str | None) -> dict[str, Any]:
    return {
        "id": device.id,
        "model": device.model,
        "memory": format_quantity("memory", device.memory) if device.memory is not None else None,
        "memory_base": device.memory,
        "uuid": device.uuid,
        "serial": device.serial,
        "attrs": device.attrs,
        "resource": resource,
        "allocation_id": holder,
    }


def render_node(
    node: Node, allocated: Vector, holders: dict[str, dict[str, str]] | None = None
) -> dict[str, Any]:
    available = {r: cap - allocated.get(r, 0) for r, cap in node.resources.items()}
    held = holders or {}
    return {
        "name": node.name,
        "resources": format_vector(node.resources),
        "resources_base": dict(node.resources),
        "allocated": format_vector(allocated),
        "allocated_base": dict(allocated),
        "available": format_vector(available),
        "available_base": available,
        "devices": {
            r: [render_device(r, d, held.get(r, {}).get(d.id)) for d in ds]
            for r, ds in node.devices.items()
        },
        "labels": node.labels,
        "specs": node.specs,
        "state": node.state.value,
        "health": node.health.value,
        "created_at": iso(node.created_at),
        "updated_at": iso(node.updated_at),
    }


_FORMATTED: Memo[tuple[tuple[str, int], ...], dict[str, str]] = Memo()


def _format_granted(resources: Vector) -> dict[str, str]:
    """``format_vector`` remembered per vector: grants come in a few shapes,
    and formatting a byte quantity tries every suffix."""
    return dict(_FORMATTED.get(tuple(resources.items()), lambda: format_vector(resources)))


def render_allocation(alloc: Allocation) -> dict[str, Any]:
    return {
        "id": alloc.id,
        "node": alloc.node,
        "resources": _format_granted(alloc.resources),
        "resources_base": dict(alloc.resources),
        # (most grants hold no devices: no comprehension's frame for them)
        "devices": {r: list(ids) for r, ids in alloc.devices.items()} if alloc.devices else {},
        "owner": alloc.owner,
        "labels": alloc.labels,
        "state": alloc.state.value,
        "reason": alloc.reason.value if alloc.reason else None,
        "created_at": iso(alloc.created_at),
        "released_at": iso(alloc.released_at),
    }


class TaskIn(Strict):
    resources: Resources
    count: Annotated[int, Field(ge=1, le=10_000), NUMBER] = 1


class AffinityIn(Strict):
    selector: Annotated[str, Field(min_length=1, max_length=1024, pattern=PRINTABLE)]
    target: Annotated[str, Field(pattern=r"^(node|job)$")] = "node"
    weight: Annotated[int, Field(ge=1, le=100), NUMBER] = 1
    required: bool = False


class RestartIn(Strict):
    """``never``: a failed task fails its job. ``on-failure``: a task that
    exits non-zero or whose node is lost runs again, up to ``max_retries``
    times, after ``backoff`` doubling each time."""

    policy: Annotated[str, Field(pattern=r"^(never|on-failure)$")] = "never"
    max_retries: Annotated[int, Field(ge=0, le=1000), NUMBER] | None = None
    backoff: Annotated[float, Field(gt=0, le=3600), NUMBER] | Annotated[
        str, Field(max_length=32)] | None = None


When = Annotated[float, Field(ge=0, le=1e11), NUMBER] | Annotated[str, Field(max_length=64)]
Duration = (Annotated[float, Field(gt=0, le=315_360_000), NUMBER]
            | Annotated[str, Field(max_length=32)])


class JobIn(Strict):
    """A job: ``tasks`` (or the shorthand ``resources`` + ``count``) and how to place them."""

    name: Text | None = None
    queue: Annotated[str, Field(pattern=NODE_NAME)] = "default"
    priority: Annotated[int, Field(ge=-1_000_000, le=1_000_000), NUMBER] = 0
    resources: Resources | Literal["auto"] | None = Field(
        default=None, description="what each task asks for; \"auto\" (or \"auto\" for cpu or "
        "memory) predicts it from the job's past runs")
    count: Annotated[int, Field(ge=1, le=10_000), NUMBER] = 1
    tasks: Annotated[list[TaskIn], Field(max_length=100)] | None = None
    array: Annotated[int, Field(ge=1, le=10_000), NUMBER] | None = Field(
        default=None, description="a job array: this many independent tasks of "
        "``resources``, each told its index in APPORTION_ARRAY_INDEX")
    constraints: list[Annotated[str, Field(max_length=1024, pattern=PRINTABLE)]] = Field(
        default_factory=list, max_length=64,
        description="label terms: facility=texas-1, type in (gpu), !spot, gpu.memory>=40Gi")
    affinity: Annotated[list[AffinityIn], Field(max_length=16)] = Field(default_factory=list)
    anti_affinity: Annotated[list[AffinityIn], Field(max_length=16)] = Field(
        default_factory=list)
    gang: bool = False
    preemptible: bool = False
    deadline: When | None = Field(default=None, description="epoch seconds or ISO 8601")
    runtime_estimate: Duration | None = None
    command: Annotated[list[Annotated[str, Field(max_length=4096)]],
                       Field(min_length=1, max_length=256)] | None = None
    labels: Labels = Field(default_factory=dict)
    restart: RestartIn | None = Field(
        default=None, description="what to do when a task fails or its node is lost")
    stop_signal: Annotated[str, Field(pattern=r"^(SIG)?[A-Z0-9]{2,10}$")] | None = Field(
        default=None, description="signal that asks a task to stop (default SIGTERM)")
    stop_grace: Duration | None = Field(
        default=None, description="time between the stop signal and SIGKILL (default 10s)")


class QueueIn(Strict):
    name: Annotated[str, Field(pattern=NODE_NAME)]
    quota: Resources = Field(default_factory=dict)
    weight: Annotated[float, Field(gt=0, le=1_000_000), NUMBER] = 1.0
    min_priority: Annotated[int, Field(ge=-1_000_000, le=1_000_000), NUMBER] | None = None
    max_priority: Annotated[int, Field(ge=-1_000_000, le=1_000_000), NUMBER] | None = None


class CompleteIn(Strict):
    succeeded: bool = True
    exit_code: Annotated[int, Field(ge=-255, le=255), NUMBER] | None = None


# -- agents ------------------------------------------------------------------------


class AgentInfo(Strict):
    id: Annotated[str, Field(min_length=1, max_length=64, pattern=PRINTABLE)]
    version: Annotated[str, Field(max_length=64, pattern=PRINTABLE)] = ""
    heartbeat_s: Annotated[float, Field(gt=0, le=3600), NUMBER] = 10.0
    stop_after_disconnect_s: Annotated[float, Field(gt=0, le=86_400), NUMBER] = 60.0
    limit_mode: Annotated[str, Field(max_length=32, pattern=PRINTABLE)] = ""
    limit_reason: Annotated[str, Field(max_length=1024, pattern=PRINTABLE)] = ""
    work_dir: Annotated[str, Field(max_length=4096, pattern=PRINTABLE)] = ""


class AgentRegisterIn(Strict):
    """What an agent found (or was told) its node offers, and how it runs."""

    node: NodeIn
    agent: AgentInfo


class HeartbeatIn(Strict):
    agent_id: Annotated[str, Field(min_length=1, max_length=64, pattern=PRINTABLE)]
    usage: Annotated[dict[str, JsonValue], Field(max_length=MAX_KEYS)] = Field(
        default_factory=dict)
    tasks: Annotated[list[dict[str, JsonValue]], Field(max_length=10_000)] = Field(
        default_factory=list)


class TaskReportIn(Strict):
    """What an agent says about one of its tasks."""

    state: Annotated[str, Field(pattern=r"^(starting|running|exited)$")]
    exit_code: Annotated[int, Field(ge=-255, le=255), NUMBER] | None = None
    signalled: bool = False
    memory_exceeded: bool = False
    lost: bool = False
    reason: Annotated[str, Field(max_length=512, pattern=PRINTABLE)] | None = None
    checkpoint: bool = False
    times: dict[Annotated[str, Field(max_length=32)],
                Annotated[float, Field(ge=0, le=1e11), NUMBER]] = Field(default_factory=dict)
    usage: Annotated[dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_.]{0,31}$")],
                          Annotated[float, Field(ge=0, le=1e18, allow_inf_nan=False), NUMBER]],
                     Field(max_length=32)] = Field(
        default_factory=dict,
        description="what the task used: memory and gpu_memory (peak bytes), cpu_seconds, "
                    "gpu_util (mean percent), runtime_s")


class TaskReportItem(TaskReportIn):
    task: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


class TaskReportsIn(Strict):
    """Several tasks' reports in one call (an agent sends what it has queued)."""

    reports: Annotated[list[TaskReportItem], Field(min_length=1, max_length=1000)]


class DrainIn(Strict):
    deadline: Duration | None = Field(
        default=None, description="stop what still runs after this long (default: never)")
