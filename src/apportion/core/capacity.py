"""Capacity summaries: total, allocated and available per group and resource."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from apportion.core.labels import LabelRequirement, matches
from apportion.core.model import Node
from apportion.core.resources import Vector

GROUP_BY = ("facility", "type", "resource", "zone", "node")


@dataclass(slots=True)
class ResourceTotals:
    total: int = 0
    allocated: int = 0

    @property
    def available(self) -> int:
        return self.total - self.allocated

    @property
    def allocated_share(self) -> float:
        return self.allocated / self.total if self.total else 0.0


@dataclass(slots=True)
class GroupSummary:
    group: str
    nodes: int = 0
    resources: dict[str, ResourceTotals] = field(default_factory=dict)


def summarize(nodes: Iterable[tuple[Node, Vector]], group_by: str) -> list[GroupSummary]:
    """Sum (node, allocated vector) pairs by a label, by node, or by resource.

    Nodes without the label fall in group ``"(none)"`` so totals always add up
    to the whole cluster; grouped by resource, ``nodes`` counts the nodes
    offering it."""
    groups: dict[str, GroupSummary] = {}
    for node, allocated in nodes:
        keys = list(node.resources) if group_by == "resource" else [_label(node, group_by)]
        for key in keys:
            group = groups.setdefault(key, GroupSummary(key))
            group.nodes += 1
            wanted = [key] if group_by == "resource" else list(node.resources)
            for resource in wanted:
                totals = group.resources.setdefault(resource, ResourceTotals())
                totals.total += node.resources[resource]
                totals.allocated += allocated.get(resource, 0)
    return [groups[k] for k in sorted(groups)]


def _label(node: Node, group_by: str) -> str:
    if group_by == "node":
        return node.name
    return node.labels.get(group_by, "(none)")


@dataclass(frozen=True, slots=True)
class PendingDemand:
    """What a waiting job still needs (summed over its unplaced tasks) and the
    node label terms it must be placed under."""

    total: Vector
    requirements: tuple[LabelRequirement, ...] = ()


def pending_by_group(
    nodes: Iterable[Node], pending: Iterable[PendingDemand], group_by: str
) -> dict[str, dict[str, float]]:
    """Pending demand per group and resource.

    Grouped by resource, every pending amount counts for its resource. By a
    label, a job's amount of each resource is shared among the groups whose
    nodes it may use (label terms match, the resource is offered), in
    proportion to their capacity of it; a job no node could hold counts
    nowhere, since no group would grow to serve it."""
    node_list = list(nodes)
    out: dict[str, dict[str, float]] = {}
    for demand in pending:
        if group_by == "resource":
            for resource, amount in demand.total.items():
                bucket = out.setdefault(resource, {})
                bucket[resource] = bucket.get(resource, 0.0) + amount
            continue
        eligible = [n for n in node_list if matches(n.labels, demand.requirements)]
        for resource, amount in demand.total.items():
            shares: dict[str, int] = {}
            for node in eligible:
                if node.resources.get(resource, 0) > 0:
                    key = _label(node, group_by)
                    shares[key] = shares.get(key, 0) + node.resources[resource]
            whole = sum(shares.values())
            for key, capacity in shares.items():
                bucket = out.setdefault(key, {})
                bucket[resource] = bucket.get(resource, 0.0) + amount * capacity / whole
    return out


# -- fragmentation ------------------------------------------------------------------

COMMON_SHAPES: tuple[Vector, ...] = (
    {"cpu": 1000}, {"cpu": 4000}, {"cpu": 16_000},
    {"cpu": 1000, "memory": 4 << 30}, {"cpu": 8000, "memory": 32 << 30},
    {"gpu": 1}, {"gpu": 2}, {"gpu": 4}, {"gpu": 8},
)
"""Request shapes counted when no job waits to say which matter."""


@dataclass(frozen=True, slots=True)
class ResourceFragmentation:
    resource: str
    free: int
    """Free on ready nodes, in all."""
    largest_block: int
    """The most of it free on one node."""
    nodes_with_free: int

    @property
    def index(self) -> float:
        """0 when all the free capacity sits on one node, towards 1 as it is
        scattered in small pieces: ``1 - largest block / free``."""
        return 1.0 - self.largest_block / self.free if self.free else 0.0


@dataclass(frozen=True, slots=True)
class ShapeFit:
    shape: Vector
    fits: int
    """How many tasks of this shape fit on the free capacity now, node by node."""
    if_whole: int
    """How many would fit if the free capacity were one node (the gap to
    ``fits`` is what fragmentation costs)."""


def fragmentation_report(free: Iterable[Vector], shapes: Iterable[Vector]
                         ) -> tuple[list[ResourceFragmentation], list[ShapeFit]]:
    """Per resource, how scattered the free capacity is; per request shape,
    how many fit (``free``: each ready node's free vector)."""
    nodes = [dict(f) for f in free]
    totals: dict[str, int] = {}
    largest: dict[str, int] = {}
    holders: dict[str, int] = {}
    for vector in nodes:
        for r, q in vector.items():
            if q > 0:
                totals[r] = totals.get(r, 0) + q
                largest[r] = max(largest.get(r, 0), q)
                holders[r] = holders.get(r, 0) + 1
    resources = [ResourceFragmentation(r, totals[r], largest[r], holders[r])
                 for r in sorted(totals)]
    fits = [ShapeFit(dict(shape), sum(_count(shape, v) for v in nodes), _count(shape, totals))
            for shape in shapes]
    return resources, fits


def _count(shape: Vector, free: Vector) -> int:
    """Tasks of ``shape`` that fit in ``free``."""
    if not shape:
        return 0
    return min(free.get(r, 0) // q for r, q in shape.items() if q > 0)
