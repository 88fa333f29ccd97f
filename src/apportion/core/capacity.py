"""Capacity summaries: total, allocated and available per group and resource."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from apportion.core.labels import Requirement, matches
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
    requirements: tuple[Requirement, ...] = ()


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
