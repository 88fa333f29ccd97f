"""The nouns of ARCHITECTURE.md as frozen values: devices, nodes, allocations.

These are what the ledger, the store and the API exchange. Times are float
seconds since the epoch, always passed in by the caller (core reads no clock).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from apportion.core.errors import InvalidInput
from apportion.core.resources import Vector


class NodeState(StrEnum):
    READY = "ready"
    DRAINING = "draining"
    CORDONED = "cordoned"
    SUSPECT = "suspect"
    DOWN = "down"


class Health(StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"


class AllocationState(StrEnum):
    ACTIVE = "active"
    RELEASED = "released"


class ReleaseReason(StrEnum):
    RELEASED = "released"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PREEMPTED = "preempted"
    NODE_LOST = "node_lost"
    NODE_DELETED = "node_deleted"
    EXPIRED = "expired"


# The members the grant path tests, bound once: on Python 3.11 an enum class
# has a ``__getattr__`` (EnumType's), so every ``NodeState.READY`` goes
# through a Python-level lookup hook, about 700 instructions; a grant's walk
# read two for each node it looked at (bench_grant_loop, h29-http).
READY = NodeState.READY
UNHEALTHY = Health.UNHEALTHY
ACTIVE = AllocationState.ACTIVE


@dataclass(frozen=True, slots=True)
class Device:
    """One identified unit of a countable resource (a GPU, an ASIC, a licence seat)."""

    id: str
    model: str | None = None
    memory: int | None = None
    uuid: str | None = None
    serial: str | None = None
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Node:
    """A machine that offers capacity. ``resources`` is its capacity."""

    name: str
    resources: Vector
    devices: dict[str, tuple[Device, ...]] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    specs: dict[str, Any] = field(default_factory=dict)
    state: NodeState = NodeState.READY
    health: Health = Health.HEALTHY
    created_at: float = 0.0
    updated_at: float = 0.0

    @property
    def schedulable(self) -> bool:
        return self.state is READY and self.health is not UNHEALTHY


def validated_node(node: Node) -> Node:
    """Reconcile declared device lists with capacity; refuse contradictions."""
    resources = dict(node.resources)
    for resource, devices in node.devices.items():
        ids = [d.id for d in devices]
        if len(set(ids)) != len(ids):
            raise InvalidInput(f"devices.{resource}: device ids must be unique", field="devices")
        declared = resources.get(resource)
        if declared is None:
            resources[resource] = len(devices)
        elif declared != len(devices):
            raise InvalidInput(
                f"devices.{resource}: {len(devices)} devices listed but resources.{resource} "
                f"is {declared}; they must agree",
                field=f"devices.{resource}",
            )
    if resources == node.resources:
        return node
    return Node(
        node.name,
        resources,
        node.devices,
        node.labels,
        node.specs,
        node.state,
        node.health,
        node.created_at,
        node.updated_at,
    )


@dataclass(frozen=True, slots=True)
class Allocation:
    """A grant of a resource vector (and named devices) on one node."""

    id: str
    node: str
    resources: Vector
    devices: dict[str, tuple[str, ...]]
    owner: str | None
    labels: dict[str, str]
    state: AllocationState
    created_at: float
    reason: ReleaseReason | None = None
    released_at: float | None = None

    @property
    def active(self) -> bool:
        return self.state is ACTIVE

    def released(self, reason: ReleaseReason, now: float) -> Allocation:
        return Allocation(
            self.id,
            self.node,
            self.resources,
            self.devices,
            self.owner,
            self.labels,
            AllocationState.RELEASED,
            self.created_at,
            reason,
            now,
        )
