"""Where free capacity is: nodes grouped into classes and buckets, and the
per-resource indexes over them that the placement walk reads.

This is the part of ``ClusterState`` (``state``) that keeps a decision from
scanning every node:

* **Node classes.** Nodes with the same capacity, labels, device models,
  state and health form a class (Nomad calls it a computed node class). A
  constraint, a device model or "can this node ever hold the task" is checked
  once per class, not once per node.
* **Buckets.** Nodes of one class with the same free vector are
  interchangeable right now, so they sit in one bucket. One check answers for
  the whole bucket, and a gang of 64 one-processor tasks takes 64 nodes from
  the idle bucket in one step (the "counted pool" a trace replay needs).
* **Indexes over free capacity.** Per resource, a ``FreeIndex`` of
  ``(free amount, class id, free vector, bucket id)`` over schedulable
  buckets, in blocks that bound what their buckets have free. A request
  bisects to the first bucket with enough of one resource and walks from
  there (upwards for bin-pack, downwards from the top for spread), skipping
  blocks that cannot hold it; the largest free amount on any ready node is
  the last entry.

Ties break on the state itself (class id and free vector between buckets,
node name within a bucket), never on the order buckets were made or nodes
moved, so a rolled-back transaction or a copy of the state leaves every
later decision as it was.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from apportion.core.errors import NodeNotFound
from apportion.core.model import Device, Health, Node, NodeState
from apportion.core.scheduling.fastindex import Index, move_free
from apportion.core.scheduling.freeindex import FreeIndex


@dataclass(eq=False, slots=True)
class NodeClass:
    """Nodes alike in everything a constraint or a capacity check can see."""

    id: int
    resources: tuple[str, ...]
    capacity: tuple[int, ...]
    pos: dict[str, int]
    labels: Mapping[str, str]
    devices: Mapping[str, tuple[Device, ...]]
    state: NodeState
    health: Health
    cost: float | None
    size: int = 0
    bit: int = 0
    """``1 << id``: the class's bit in a ``FreeIndex`` block's class mask."""
    free_sum: list[int] = field(default_factory=list)
    """Free capacity summed over the class's nodes (kept for schedulable
    classes; backfill profiles start from it)."""

    @property
    def schedulable(self) -> bool:
        return self.state is NodeState.READY and self.health is not Health.UNHEALTHY

    def cap(self, resource: str) -> int:
        i = self.pos.get(resource)
        return 0 if i is None else self.capacity[i]


class Bucket:
    """Nodes of one class with the same free vector."""

    __slots__ = ("cls", "free", "id", "nodes")

    def __init__(self, id: int, cls: NodeClass, free: tuple[int, ...]) -> None:
        self.id = id
        self.cls = cls
        self.free = free
        # Sorted by name: which of these interchangeable nodes a task takes
        # must not depend on the order they arrived in (a transaction that
        # is rolled back, or a copy of the state, would change that order).
        self.nodes: list[str] = []


class NodeRec:
    """One node's mutable bookkeeping."""

    __slots__ = ("bucket", "cls", "device_rank", "devices", "free", "free_devices", "jobs",
                 "name", "node", "plain_devices")

    def __init__(self, node: Node, cls: NodeClass) -> None:
        self.name = node.name
        self.node = node
        self.cls = cls
        self.free: tuple[int, ...] = cls.capacity
        self.bucket: Bucket | None = None
        self.devices: dict[str, dict[str, Device]] = {
            r: {d.id: d for d in ds} for r, ds in node.devices.items()
        }
        self.free_devices: dict[str, list[str]] = {
            r: [d.id for d in ds] for r, ds in node.devices.items()
        }
        self.device_rank: dict[str, dict[str, int]] = {
            r: {d.id: i for i, d in enumerate(ds)} for r, ds in node.devices.items()
        }
        """Per resource, each device's place in the node's order: free
        devices are kept in it, and a release puts them back by it."""
        self.plain_devices = frozenset(
            r for r, ds in node.devices.items() if not any(d.attrs for d in ds))
        """Resources whose devices carry no attributes (no links, no share
        slots): any free ones serve a task alike (``devices.choose``)."""
        self.jobs: dict[str, int] = {}

    def free_vector(self) -> dict[str, int]:
        return dict(zip(self.cls.resources, self.free, strict=True))


def node_cost(labels: Mapping[str, str]) -> float | None:
    """A node's cost per hour from its ``cost`` (or ``cost.hour``) label."""
    raw = labels.get("cost", labels.get("cost.hour"))
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        return None


def _class_key(node: Node) -> tuple[Any, ...]:
    devices = tuple(
        (r, tuple(sorted((d.model or "", d.memory or 0) for d in ds)))
        for r, ds in sorted(node.devices.items())
    )
    return (
        tuple(sorted(node.resources.items())),
        tuple(sorted(node.labels.items())),
        devices,
        node.state,
        node.health,
    )


def discard_sorted(names: list[str], name: str) -> None:
    """Remove ``name`` from the sorted list ``names``."""
    i = bisect_left(names, name)
    if i == len(names) or names[i] != name:
        raise KeyError(name)
    del names[i]


class FreeCapacity:
    """Nodes by class and bucket, with free and capacity totals and the
    per-resource indexes over free capacity; ``ClusterState`` builds on it."""

    def __init__(self) -> None:
        self._recs: dict[str, NodeRec] = {}
        self._classes: dict[tuple[Any, ...], NodeClass] = {}
        self._class_by_id: dict[int, NodeClass] = {}
        self.inexact = 0
        """The bits (``NodeClass.bit``) of classes with an amount that is
        zero or not an exact C double (2**50 or more): ``_freeindex_c.pick``
        would walk and then hand back, its walk's bound tightenings left
        behind, so ``Placer._place_one`` walks in Python from the start for
        a job such a class may hold (only for those: a node declaring
        ``gpu=0`` leaves the other classes' placements compiled)."""
        self._buckets: dict[int, Bucket] = {}
        self._bucket_of: dict[tuple[int, tuple[int, ...]], Bucket] = {}
        self._index: dict[str, FreeIndex] = {}
        self._next_bucket = 0
        self._free_total: dict[str, int] = {}
        self._cap_total: dict[str, int] = {}
        self.version = 0
        """Bumped whenever the set of node classes changes; caches keyed on
        classes are valid while it stays the same."""
        self.cache: dict[Any, Any] = {}
        """Answers that outlive a cycle (filter results per node class and job
        shape, shape keys); cleared when ``version`` changes, which only
        costs relearning those that do not depend on the classes."""

    # -- reading ---------------------------------------------------------

    @property
    def nodes(self) -> Mapping[str, NodeRec]:
        return self._recs

    @property
    def classes(self) -> Iterable[NodeClass]:
        return self._class_by_id.values()

    def class_by_id(self, cid: int) -> NodeClass:
        return self._class_by_id[cid]

    def rec(self, name: str) -> NodeRec:
        rec = self._recs.get(name)
        if rec is None:
            raise NodeNotFound(f"node {name} not found", node=name)
        return rec

    def free(self, name: str) -> dict[str, int]:
        return self.rec(name).free_vector()

    def free_total(self) -> dict[str, int]:
        """Free capacity summed over schedulable nodes."""
        return dict(self._free_total)

    def capacity_total(self) -> dict[str, int]:
        """Capacity summed over schedulable nodes (fair-share denominators)."""
        return dict(self._cap_total)

    @property
    def free_totals(self) -> Mapping[str, int]:
        """Free capacity summed over schedulable nodes, live (read only)."""
        return self._free_total

    def free_total_of(self, resource: str) -> int:
        return self._free_total.get(resource, 0)

    def max_free(self, resource: str) -> int:
        """Largest free amount of ``resource`` on any schedulable node."""
        index = self._index.get(resource)
        return index.last()[0] if index else 0

    def index(self, resource: str) -> FreeIndex | None:
        return self._index.get(resource)

    @property
    def bucket_map(self) -> Mapping[int, Bucket]:
        return self._buckets

    def bucket(self, bucket_id: int) -> Bucket:
        return self._buckets[bucket_id]

    def buckets(self) -> Iterable[Bucket]:
        return self._buckets.values()

    def iter_recs(self) -> Iterator[NodeRec]:
        return iter(self._recs.values())

    # -- classes ---------------------------------------------------------

    def _class_for(self, node: Node) -> NodeClass:
        key = _class_key(node)
        cls = self._classes.get(key)
        if cls is None:
            names = tuple(sorted(node.resources))
            cls = NodeClass(
                len(self._classes),
                names,
                tuple(node.resources[r] for r in names),
                {r: i for i, r in enumerate(names)},
                dict(node.labels),
                dict(node.devices),
                node.state,
                node.health,
                node_cost(node.labels),
            )
            cls.free_sum = [0] * len(names)
            cls.bit = 1 << cls.id
            self._classes[key] = cls
            self._class_by_id[cls.id] = cls
            if any(a <= 0 or a >= 2**50 for a in cls.capacity):
                self.inexact |= cls.bit
            self.version += 1
            self.cache.clear()
        return cls

    # -- buckets and indexes ---------------------------------------------

    def _enter(self, rec: NodeRec, free: tuple[int, ...]) -> None:
        key = (rec.cls.id, free)
        bucket = self._bucket_of.get(key)
        if bucket is None:
            bucket = self._new_bucket(rec.cls, free, key)
        insort(bucket.nodes, rec.name)
        rec.bucket = bucket

    def _new_bucket(
        self, cls: NodeClass, free: tuple[int, ...], key: tuple[int, tuple[int, ...]]
    ) -> Bucket:
        bucket = Bucket(self._next_bucket, cls, free)
        self._next_bucket += 1
        self._bucket_of[key] = bucket
        self._buckets[bucket.id] = bucket
        index = self._index
        bid = bucket.id
        names = cls.resources
        cid = cls.id
        # Entries order by free amount, then class and free vector (which
        # name the bucket; its id only finds it): the walk's order is a
        # function of the state, not of the order buckets were made in.
        for r, q in zip(names, free, strict=True):
            sl = index.get(r)
            if sl is None:
                sl = index[r] = Index()
            sl.add((q, cid, free, bid), names)
        return bucket

    def _leave(self, rec: NodeRec) -> None:
        bucket = rec.bucket
        if bucket is None:
            return
        rec.bucket = None
        discard_sorted(bucket.nodes, rec.name)
        if not bucket.nodes:
            self._drop_bucket(bucket)

    def _drop_bucket(self, bucket: Bucket) -> None:
        del self._bucket_of[(bucket.cls.id, bucket.free)]
        del self._buckets[bucket.id]
        index = self._index
        names = bucket.cls.resources
        free = bucket.free
        bid = bucket.id
        cid = bucket.cls.id
        for r, q in zip(names, free, strict=True):
            index[r].remove((q, cid, free, bid))

    def _totals(
        self, cls: NodeClass, cap: tuple[int, ...], free: tuple[int, ...], sign: int
    ) -> None:
        ft, ct = self._free_total, self._cap_total
        fs = cls.free_sum
        for i, (r, c, f) in enumerate(zip(cls.resources, cap, free, strict=True)):
            ft[r] = ft.get(r, 0) + sign * f
            ct[r] = ct.get(r, 0) + sign * c
            fs[i] += sign * f

    def _move_py(self, rec: NodeRec, old: tuple[int, ...], new: tuple[int, ...]) -> None:
        """``_move`` in Python: where the compiled one was not built, and
        what ``tests/core/test_sched_pick_native.py`` holds it to."""
        # The hot path of every grant and release: _leave/_enter inlined.
        rec.free = new
        bucket = rec.bucket
        if bucket is None:
            return
        cls = rec.cls
        fs = cls.free_sum
        ft = self._free_total
        names = cls.resources
        if len(new) == 1:
            # One resource (a GPU class): the loop below without its range.
            d = new[0] - old[0]
            ft[names[0]] += d
            fs[0] += d
        else:
            for i in range(len(new)):
                d = new[i] - old[i]
                if d:
                    ft[names[i]] += d
                    fs[i] += d
        nodes = bucket.nodes
        key = (cls.id, new)
        target = self._bucket_of.get(key)
        if target is None and len(nodes) == 1:
            # Alone in its bucket, to a free vector no bucket has (most
            # grants on a busy cluster): the bucket moves with the node.
            self._refile(bucket, new, key)
            return
        discard_sorted(nodes, rec.name)
        if not nodes:
            self._drop_bucket(bucket)
        if target is None:
            target = self._new_bucket(cls, new, key)
        insort(target.nodes, rec.name)
        rec.bucket = target

    _move = _move_py if move_free is None else move_free
    """Node ``rec`` goes from free vector ``old`` to ``new``: its bucket,
    the totals and the index entries follow (``fastindex.move_free``, the
    same in C, where it was built)."""

    def _refile(self, bucket: Bucket, new: tuple[int, ...], key: tuple[int, tuple[int, ...]]
                ) -> None:
        """Give ``bucket`` the free vector ``new`` and re-file its index
        entries: what dropping it and making a bucket for ``new`` would do,
        without the new bucket (its id names it, never orders it)."""
        old = bucket.free
        cls = bucket.cls
        cid = cls.id
        bid = bucket.id
        bucket_of = self._bucket_of
        del bucket_of[(cid, old)]
        bucket_of[key] = bucket
        bucket.free = new
        index = self._index
        names = cls.resources
        for r, q_old, q_new in zip(names, old, new, strict=True):
            index[r].move((q_old, cid, old, bid), (q_new, cid, new, bid), names)

    def align(self, cls: NodeClass, request: Mapping[str, int]) -> tuple[int, ...] | None:
        """``request`` laid out as ``cls``'s vector, or None when the class
        lacks one of its resources."""
        pos = cls.pos
        if len(pos) == 1 and len(request) == 1:
            # One resource on a class of one (a GPU task on a GPU node, at
            # every release): the loop below comes to this.
            [(r, q)] = request.items()
            return (q,) if r in pos else None
        out = [0] * len(cls.resources)
        for r, q in request.items():
            i = pos.get(r)
            if i is None:
                return None
            out[i] = q
        return tuple(out)
