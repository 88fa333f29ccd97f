"""Turning validated request bodies into core values (quantities parsed)."""

from __future__ import annotations

from collections.abc import Mapping

from apportion.core.model import Device, Node
from apportion.core.resources import check_name, parse_quantity, parse_vector
from apportion.exceptions import InvalidInput
from apportion.server.schemas import DeviceIn, NodeIn, NodeUpdate


def devices_from(body: dict[str, list[DeviceIn]]) -> dict[str, tuple[Device, ...]]:
    out: dict[str, tuple[Device, ...]] = {}
    for resource, items in body.items():
        check_name(resource, "devices")
        out[resource] = tuple(
            Device(
                d.id,
                d.model,
                parse_quantity("memory", d.memory, f"devices.{resource}[{i}]")
                if d.memory is not None
                else None,
                d.uuid,
                d.serial,
                dict(d.attrs),
            )
            for i, d in enumerate(items)
        )
    return out


def capacity_from(
    resources: Mapping[str, object], devices: Mapping[str, tuple[Device, ...]]
) -> dict[str, int]:
    """Parse a capacity vector. ``parse_vector`` drops zero entries, so the
    ledger could no longer see that ``"gpu": 0`` contradicts a device list
    (it would count the devices instead): refuse that here."""
    vector = parse_vector(resources)
    for name, listed in devices.items():
        if listed and name in resources and name not in vector:
            raise InvalidInput(
                f"devices.{name}: {len(listed)} devices listed but resources.{name} is 0; "
                "they must agree",
                field=f"devices.{name}",
            )
    return vector


def node_from(body: NodeIn) -> Node:
    devices = devices_from(body.devices)
    return Node(
        body.name,
        capacity_from(body.resources, devices),
        devices,
        dict(body.labels),
        dict(body.specs),
        body.state,
    )


def node_updated(current: Node, body: NodeUpdate) -> Node:
    devices = devices_from(body.devices) if body.devices is not None else current.devices
    return Node(
        current.name,
        capacity_from(body.resources, devices) if body.resources is not None
        else current.resources,
        devices,
        dict(body.labels) if body.labels is not None else current.labels,
        dict(body.specs) if body.specs is not None else current.specs,
        body.state if body.state is not None else current.state,
        current.health,
        current.created_at,
        current.updated_at,
    )
