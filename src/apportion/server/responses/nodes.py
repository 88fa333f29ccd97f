"""Answers about nodes and allocations (``/api/v1/nodes``, ``/api/v1/allocations``).

Every quantity appears twice: the canonical string a person reads
(``resources``) and the integer in base units a program computes with
(``resources_base``: millicores, bytes, devices).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import ConfigDict, Field

from apportion.core.model import AllocationState, Health, NodeState, ReleaseReason
from apportion.server.responses import Documented, Out

Strings = dict[str, str]
Bases = dict[str, int]
Stamp = Annotated[str | None, Field(description="ISO 8601, UTC ('2026-01-05T10:00:00Z')")]

_ALLOCATION: dict[str, Any] = {
    "id": "a-5f3c9e1d2b7a",
    "node": "n1",
    "resources": {"cpu": "2", "gpu": "1"},
    "resources_base": {"cpu": 2000, "gpu": 1},
    "devices": {"gpu": ["0"]},
    "owner": "alice",
    "labels": {"job": "train"},
    "state": "active",
    "reason": None,
    "created_at": "2026-01-05T10:00:00Z",
    "released_at": None,
}
_NODE: dict[str, Any] = {
    "name": "n1",
    "resources": {"cpu": "64", "gpu": "4", "memory": "256Gi"},
    "resources_base": {"cpu": 64000, "gpu": 4, "memory": 274877906944},
    "allocated": {"cpu": "2", "gpu": "1"},
    "allocated_base": {"cpu": 2000, "gpu": 1},
    "available": {"cpu": "62", "gpu": "3", "memory": "256Gi"},
    "available_base": {"cpu": 62000, "gpu": 3, "memory": 274877906944},
    "devices": {
        "gpu": [
            {
                "id": "0",
                "model": "H100",
                "memory": "80Gi",
                "memory_base": 85899345920,
                "uuid": None,
                "serial": None,
                "attrs": {},
                "resource": "gpu",
                "allocation_id": "a-5f3c9e1d2b7a",
            }
        ]
    },
    "labels": {"facility": "texas-1", "type": "gpu"},
    "specs": {},
    "state": "ready",
    "health": "healthy",
    "created_at": "2026-01-05T09:00:00Z",
    "updated_at": "2026-01-05T09:00:00Z",
}


class AllocationOut(Out):
    """Resources granted on one node, to an owner."""

    model_config = ConfigDict(json_schema_extra={"examples": [_ALLOCATION]})

    id: str
    node: str
    resources: Strings
    resources_base: Bases
    devices: dict[str, list[str]] = Field(description="resource: the device ids held")
    owner: str | None
    labels: Strings
    state: AllocationState
    reason: ReleaseReason | None = Field(description="why it was released; null while active")
    created_at: Stamp
    released_at: Stamp


class AllocationReleasingOut(AllocationOut):
    """A forced release under way: the task holding it is stopping."""

    model_config = ConfigDict(json_schema_extra={"examples": [{**_ALLOCATION, "releasing": True}]})

    releasing: bool


class AllocationListOut(Out):
    allocations: list[AllocationOut]
    count: int
    limit: int
    offset: int


class DeviceOut(Out):
    id: str
    model: str | None
    memory: str | None
    memory_base: int | None
    uuid: str | None
    serial: str | None
    attrs: dict[str, Any]
    resource: str
    allocation_id: str | None = Field(description="the allocation holding it, if any")


class NodeOut(Out):
    """A node: what it has, what is allocated, what is free, its devices."""

    model_config = ConfigDict(json_schema_extra={"examples": [_NODE]})

    name: str
    resources: Strings
    resources_base: Bases
    allocated: Strings
    allocated_base: Bases
    available: Strings
    available_base: Bases
    devices: dict[str, list[DeviceOut]]
    labels: Strings
    specs: dict[str, Any]
    state: NodeState
    health: Health
    created_at: Stamp
    updated_at: Stamp


class NodeDetailOut(NodeOut):
    """A node with its active allocations."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{**_NODE, "allocations": [_ALLOCATION], "allocations_total": 1}]
        }
    )

    allocations: list[AllocationOut] = Field(description="at most allocations_limit")
    allocations_total: int


class NodeDrainedOut(NodeOut):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{**_NODE, "state": "draining", "running_tasks": 2}]}
    )

    running_tasks: int = Field(description="tasks still running on it")


class NodeListOut(Out):
    nodes: list[NodeOut]
    count: int


class NodeDeletedOut(Out):
    model_config = ConfigDict(json_schema_extra={"examples": [{"deleted": "n1", "released": []}]})

    deleted: str
    released: list[AllocationOut] = Field(description="allocations released with it (force)")


class RescanOut(Out):
    model_config = ConfigDict(json_schema_extra={"examples": [{"node": "n1", "rescan": 3}]})

    node: str
    rescan: int = Field(description="rescans asked for so far")


Allocation = Annotated[dict[str, Any], Documented(AllocationOut)]
AllocationList = Annotated[dict[str, Any], Documented(AllocationListOut)]
Node = Annotated[dict[str, Any], Documented(NodeOut)]
NodeDetail = Annotated[dict[str, Any], Documented(NodeDetailOut)]
NodeDrained = Annotated[dict[str, Any], Documented(NodeDrainedOut)]
NodeList = Annotated[dict[str, Any], Documented(NodeListOut)]
NodeDeleted = Annotated[dict[str, Any], Documented(NodeDeletedOut)]
Rescan = Annotated[dict[str, Any], Documented(RescanOut)]
