"""The ledger: what every node has free, and the only code that grants.

It holds, per node, the free vector and the free devices, updated in place by
each grant and release, so a grant costs a few dictionary operations instead
of a sum over allocations, and keeps sorted indexes over free capacity.
Which node a grant lands on ("let apportion pick", or whether a named node
may take it) is the placement engine's decision (``scheduling.engine``, the
same place that places jobs), made on these indexes. The ledger is pure: ids
and times come from the caller; the service makes its decisions durable.

Invariant kept here and checked by the property tests: for every node and
resource, ``free >= 0`` and ``free + sum(active allocations) == capacity``;
no device is held twice, so a GPU split in ``N`` shares (``gpu_shares``)
never gives out more than ``N``, and the shares of one grant sit on one GPU.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from sortedcontainers import SortedList

from apportion.core.errors import (
    AllocationNotFound,
    CapacityBelowAllocated,
    InsufficientResources,
    InvalidInput,
    NodeExists,
    NodeHasAllocations,
    NodeNotFound,
)
from apportion.core.gpu_shares import one_gpu, pick_slots
from apportion.core.model import (
    ACTIVE,
    Allocation,
    Device,
    Node,
    ReleaseReason,
    validated_node,
)
from apportion.core.reasons import RESOURCES_FIT, Code, Kind, Reason, refusal
from apportion.core.resources import Vector, format_quantity
from apportion.core.scheduling import engine


@dataclass(slots=True)
class _Slot:
    """Mutable bookkeeping for one node; never leaves the ledger."""

    node: Node
    free: dict[str, int]
    free_devices: dict[str, list[str]]
    device_order: dict[str, dict[str, int]]
    allocations: set[str] = field(default_factory=set)


class Ledger:
    """In-memory ledger of nodes, free capacity and active allocations."""

    def __init__(self) -> None:
        self._slots: dict[str, _Slot] = {}
        self._active: dict[str, Allocation] = {}
        self._index: dict[str, SortedList] = {}
        self._indexed: dict[str, dict[str, int]] = {}
        self._dirty: set[str] = set()
        self._nodes: dict[str, Node] | None = None
        """The nodes by name, built when first read after a change: read on
        every submission and sweep, a fresh dict of 10,000 nodes each time
        cost more than the work that read it."""

    # -- inventory -------------------------------------------------------

    @property
    def nodes(self) -> Mapping[str, Node]:
        """The nodes by name; a later change makes a new mapping, so one read
        stays as it was."""
        if self._nodes is None:
            self._nodes = {name: slot.node for name, slot in self._slots.items()}
        return self._nodes

    def node(self, name: str) -> Node:
        return self._slot(name).node

    def free(self, name: str) -> dict[str, int]:
        return dict(self._slot(name).free)

    def allocated(self, name: str) -> dict[str, int]:
        slot = self._slot(name)
        return {r: cap - slot.free.get(r, 0) for r, cap in slot.node.resources.items()}

    def free_devices(self, name: str) -> dict[str, list[str]]:
        return {r: list(ids) for r, ids in self._slot(name).free_devices.items()}

    def active(self) -> Mapping[str, Allocation]:
        return self._active

    def allocations_on(self, name: str) -> list[Allocation]:
        return [self._active[a] for a in sorted(self._slot(name).allocations)]

    def add_node(self, node: Node) -> Node:
        if node.name in self._slots:
            raise NodeExists(f"node {node.name} already exists", node=node.name)
        node = validated_node(node)
        order = {r: {d.id: i for i, d in enumerate(ds)} for r, ds in node.devices.items()}
        self._nodes = None
        self._slots[node.name] = _Slot(
            node,
            dict(node.resources),
            {r: [d.id for d in ds] for r, ds in node.devices.items()},
            order,
        )
        self._dirty.add(node.name)
        return node

    def update_node(self, node: Node) -> Node:
        """Replace a node's description; capacity may not drop below allocated."""
        slot = self._slot(node.name)
        node = validated_node(node)
        allocated = self.allocated(node.name)
        for resource, used in sorted(allocated.items()):
            if used and node.resources.get(resource, 0) < used:
                raise CapacityBelowAllocated(
                    f"resources.{resource}: cannot lower capacity of node {node.name} to "
                    f"{format_quantity(resource, node.resources.get(resource, 0))}; "
                    f"{format_quantity(resource, used)} is allocated",
                    resource=resource,
                    node=node.name,
                )
        held = self._held_devices(slot)
        for resource, ids in held.items():
            offered = {d.id for d in node.devices.get(resource, ())}
            missing = sorted(ids - offered)
            if missing:
                raise CapacityBelowAllocated(
                    f"devices.{resource}: devices {', '.join(missing)} of node {node.name} are "
                    "allocated and cannot be removed",
                    resource=resource,
                    node=node.name,
                )
        slot.node = node
        self._nodes = None
        slot.free = {r: cap - allocated.get(r, 0) for r, cap in node.resources.items()}
        slot.device_order = {
            r: {d.id: i for i, d in enumerate(ds)} for r, ds in node.devices.items()
        }
        slot.free_devices = {
            r: [d.id for d in ds if d.id not in held.get(r, set())]
            for r, ds in node.devices.items()
        }
        self._dirty.add(node.name)
        return node

    def remove_node(self, name: str, *, force: bool, now: float) -> list[Allocation]:
        """Forget a node; with ``force`` its active allocations are released
        (reason ``node_deleted``) and returned."""
        slot = self._slot(name)
        if slot.allocations and not force:
            raise NodeHasAllocations(
                f"node {name} has {len(slot.allocations)} active allocation(s); release them "
                "or delete with force=true",
                node=name,
                active_allocations=len(slot.allocations),
            )
        released = [
            self.release(a, ReleaseReason.NODE_DELETED, now) for a in sorted(slot.allocations)
        ]
        del self._slots[name]
        self._nodes = None
        self._unindex(name)
        self._dirty.discard(name)
        return released

    def replace_node(self, node: Node, allocations: Iterable[Allocation]) -> None:
        """Swap in a node and its active allocations as another writer left
        them (several servers on one database): memory follows the store."""
        if node.name in self._slots:
            for alloc_id in self._slots[node.name].allocations:
                self._active.pop(alloc_id, None)
            del self._slots[node.name]
            self._nodes = None
            self._unindex(node.name)
        self.add_node(node)
        for alloc in allocations:
            self.restore(alloc)

    def forget_node(self, name: str) -> None:
        """Drop a node another writer deleted, with its allocations."""
        slot = self._slots.pop(name, None)
        self._nodes = None
        if slot is not None:
            for alloc_id in slot.allocations:
                self._active.pop(alloc_id, None)
            self._unindex(name)
            self._dirty.discard(name)

    # -- grants ----------------------------------------------------------

    def shortages(self, name: str, request: Vector) -> list[Reason]:
        """Every resource ``name`` cannot give right now (empty when it fits)."""
        return engine.shortages(name, self._slot(name), request)

    def grant(
        self,
        alloc_id: str,
        request: Vector,
        *,
        now: float,
        node: str | None = None,
        owner: str | None = None,
        labels: dict[str, str] | None = None,
        devices: Mapping[str, Sequence[str]] | None = None,
    ) -> Allocation:
        """Grant ``request`` on ``node`` (or the best-fitting ready node).

        ``devices`` names the exact devices to take (the scheduler's choice of
        linked GPUs); otherwise the first free ones, in the node's order."""
        for q in request.values():
            if q <= 0:
                request = {}
        if not request:
            raise InvalidInput(
                "resources: request at least one resource with a positive amount", field="resources"
            )
        if alloc_id in self._active:
            raise InvalidInput(f"id: allocation {alloc_id} is already active", field="id")
        if node is None:
            self._flush_index()
            slot = self._slots[engine.choose_node(request, self._index, self._slots)]
        else:
            slot = self._slots.get(node) or self._slot(node)  # the second raises NodeNotFound
            if not engine.admits(request, slot):
                engine.refuse_named(node, slot, request)
        pool = slot.free_devices
        if devices:
            taken = _chosen_devices(slot, request, devices)
        elif pool:  # a node without devices (most of a CPU fleet) skips the walk
            taken = {r: _first_free(slot, r, q) for r, q in request.items() if r in pool}
        else:
            taken = {}
        alloc = Allocation(
            alloc_id, slot.node.name, dict(request), taken, owner, labels or {},
            ACTIVE, now,
        )
        self._apply(slot, alloc)
        return alloc

    def restore(self, alloc: Allocation) -> None:
        """Re-apply an active allocation read back from the store at start."""
        slot = self._slot(alloc.node)
        missing = self.shortages(alloc.node, alloc.resources)
        if missing:
            raise InsufficientResources(refusal(missing), nodes_considered=1)
        self._apply(slot, alloc)

    def release(self, alloc_id: str, reason: ReleaseReason, now: float) -> Allocation:
        """Return an active allocation's resources; the released value is returned."""
        alloc = self._active.pop(alloc_id, None)
        if alloc is None:
            raise AllocationNotFound(f"allocation {alloc_id} is not active", id=alloc_id)
        slot = self._slots[alloc.node]
        free = slot.free
        for r, q in alloc.resources.items():
            free[r] += q
        for r, ids in alloc.devices.items():
            order = slot.device_order[r]
            pool = slot.free_devices[r]
            pool.extend(ids)
            pool.sort(key=order.__getitem__)
        slot.allocations.discard(alloc_id)
        self._dirty.add(alloc.node)
        return alloc.released(reason, now)

    def undo(self, alloc: Allocation) -> None:
        """Take back a grant whose durable write failed; it never happened."""
        if alloc.id in self._active and alloc.node in self._slots:
            self.release(alloc.id, ReleaseReason.RELEASED, alloc.created_at)

    # -- internals -------------------------------------------------------

    def _slot(self, name: str) -> _Slot:
        slot = self._slots.get(name)
        if slot is None:
            raise NodeNotFound(f"node {name} not found", node=name)
        return slot

    def _apply(self, slot: _Slot, alloc: Allocation) -> None:
        free = slot.free
        for r, q in alloc.resources.items():
            free[r] -= q
        for r, ids in alloc.devices.items():
            taken = set(ids)
            slot.free_devices[r] = [d for d in slot.free_devices[r] if d not in taken]
        slot.allocations.add(alloc.id)
        self._active[alloc.id] = alloc
        self._dirty.add(alloc.node)

    @staticmethod
    def _held_devices(slot: _Slot) -> dict[str, set[str]]:
        return {
            r: set(order) - set(slot.free_devices.get(r, ()))
            for r, order in slot.device_order.items()
        }

    def _flush_index(self) -> None:
        # Only entries whose free amount changed move: a grant released before
        # the next choice (the common lease pattern) costs nothing here.
        for name in self._dirty:
            slot = self._slots[name]
            entry = self._indexed.setdefault(name, {})
            if not entry.keys() <= slot.free.keys():  # a resource gone (rare): unindexed
                for r in [r for r in entry if r not in slot.free]:
                    self._index[r].remove((entry.pop(r), name))
            for r, q in slot.free.items():
                old = entry.get(r)
                if old == q:
                    continue
                index = self._index.get(r)
                if index is None:
                    index = self._index[r] = SortedList()
                if old is None:
                    index.add((q, name))
                else:
                    _move(index, (old, name), (q, name))
                entry[r] = q
        self._dirty.clear()

    def _unindex(self, name: str) -> None:
        for r, q in self._indexed.pop(name, {}).items():
            self._index[r].remove((q, name))


def _move(index: SortedList, old: tuple[int, str], new: tuple[int, str]) -> None:
    """``index.remove(old)`` then ``index.add(new)``, in place where ``new``
    sorts between the entries around ``old``: a grant usually lands on the
    node with the least free (the tightest fit), which stays the least, and
    the remove and add were a fifth of the grant's instructions. In place
    means one slot of one of the SortedList's sublists (and its maximum, for
    the last) changes; lengths, and so its positional index, do not."""
    lists, maxes = index._lists, index._maxes
    pos = bisect_left(maxes, old)
    sub = lists[pos]
    at = bisect_left(sub, old)
    last = len(sub) - 1
    below = sub[at - 1] if at else (lists[pos - 1][-1] if pos else None)
    above = sub[at + 1] if at < last else (lists[pos + 1][0] if pos + 1 < len(lists) else None)
    if sub[at] == old and (below is None or below < new) and (above is None or new < above):
        sub[at] = new
        if at == last:
            maxes[pos] = new
        return
    index.remove(old)
    index.add(new)


def _chosen_devices(
    slot: _Slot, request: Vector, chosen: Mapping[str, Sequence[str]]
) -> dict[str, tuple[str, ...]]:
    """Check the named devices are free and as many as requested."""
    out: dict[str, tuple[str, ...]] = {}
    for r, pool in slot.free_devices.items():
        if r not in request:
            continue
        ids = tuple(chosen.get(r, ()))
        if not ids:
            ids = _first_free(slot, r, request[r])
        busy = sorted(set(ids) - set(pool))
        if busy or len(ids) != request[r] or len(set(ids)) != len(ids):
            raise InvalidInput(
                f"devices.{r}: {', '.join(busy) or ids} on node {slot.node.name} "
                f"cannot be taken: {request[r]} free device(s) needed",
                field=f"devices.{r}",
            )
        declared = slot.node.devices.get(r, ())
        if declared and "parent" in declared[0].attrs and not one_gpu(
            ids, {d.id: d for d in declared}
        ):
            raise InvalidInput(
                f"devices.{r}: {', '.join(ids)} on node {slot.node.name} span GPUs; the "
                "shares of one grant stay on one GPU (or take whole GPUs)",
                field=f"devices.{r}",
            )
        out[r] = ids
    return out


def _first_free(slot: _Slot, resource: str, count: int) -> tuple[str, ...]:
    """The first ``count`` free devices in the node's order; for GPU shares,
    ``count`` slots of one GPU (``gpu_shares.pick_slots``)."""
    pool = slot.free_devices[resource]
    declared = slot.node.devices.get(resource, ())
    if not declared or "parent" not in declared[0].attrs:
        return tuple(pool[:count])
    ids = pick_slots(pool, {d.id: d for d in declared}, count)
    if ids is None:
        why = (f"has {len(pool)} free {resource} but no GPU with {count} of them free (the "
               "shares of one grant stay on one GPU; more than one GPU's worth takes whole GPUs)")
        raise InsufficientResources(refusal([Reason(RESOURCES_FIT, Code.DEVICE, Kind.BUSY, why,
                                                    node=slot.node.name)]), nodes_considered=1)
    return ids


def rebuild(nodes: Iterable[Node], allocations: Iterable[Allocation]) -> Ledger:
    """A ledger holding ``nodes`` with ``allocations`` (active ones) applied."""
    ledger = Ledger()
    for node in nodes:
        ledger.add_node(node)
    for alloc in allocations:
        if alloc.active:
            ledger.restore(alloc)
    return ledger


__all__ = ["Device", "Ledger", "rebuild", "validated_node"]
