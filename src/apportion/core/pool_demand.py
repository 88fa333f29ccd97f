"""Which pending tasks need new nodes, and which pool should make them.

The autoscaling policy (``core.autoscale``) takes, per pool, the resource
vectors of pending tasks that fit on no node now. This module finds them
from a snapshot: the free capacity of every node that takes work (and of
nodes asked for but not yet joined, which will), and the waiting tasks in
queue order. Tasks are placed first fit into that room, as the scheduler
would place them soon; what is left is demand. Each leftover task goes to the
first pool (config order) whose node labels satisfy the task's label
constraints and whose node type can hold it; if none can hold it, to the
first pool whose labels match, which then reports it as too large to help.
Pure: no clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from apportion.core.labels import LabelRequirement, matches
from apportion.core.resources import Vector, fits


@dataclass(frozen=True, slots=True)
class PendingTask:
    resources: Vector
    selector: tuple[LabelRequirement, ...] = ()
    """Node label terms the task requires (its job's label constraints)."""
    job: str = ""


@dataclass(frozen=True, slots=True)
class Room:
    """Free capacity on one node that takes work (or will, once it joins)."""

    free: Vector
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PoolShape:
    """What one new node of a pool would be: its resources and labels."""

    name: str
    resources: Vector
    labels: Mapping[str, str] = field(default_factory=dict)


def unplaceable(tasks: Sequence[PendingTask], rooms: Sequence[Room]) -> list[PendingTask]:
    """The tasks (in order) that do not fit, first fit, into the free room."""
    free = [dict(r.free) for r in rooms]
    left: list[PendingTask] = []
    for task in tasks:
        for room, space in zip(rooms, free, strict=True):
            if matches(room.labels, task.selector) and fits(task.resources, space):
                for name, qty in task.resources.items():
                    space[name] = space.get(name, 0) - qty
                break
        else:
            left.append(task)
    return left


def assign(tasks: Sequence[PendingTask], pools: Sequence[PoolShape]) -> dict[str, list[Vector]]:
    """Demand per pool name (every pool present, possibly empty)."""
    out: dict[str, list[Vector]] = {p.name: [] for p in pools}
    for task in tasks:
        allowed = [p for p in pools if matches(p.labels, task.selector)]
        holding = [p for p in allowed if fits(task.resources, p.resources)]
        chosen = holding[0] if holding else allowed[0] if allowed else None
        if chosen is not None:
            out[chosen.name].append(task.resources)
    return out


def pool_demand(
    tasks: Sequence[PendingTask], rooms: Sequence[Room], pools: Sequence[PoolShape]
) -> dict[str, list[Vector]]:
    """Pending demand per pool: what fits in no room now, assigned to pools."""
    return assign(unplaceable(tasks, rooms), pools)
