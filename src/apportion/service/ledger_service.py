"""Use cases of the ledger: register, update and delete nodes; grant and
release allocations. The only code that writes allocations.

A decision is made on the in-memory ``Ledger`` (fast, indexed), then made
durable through the unit of work's group committer; the caller is answered
only after the commit. The database checks every grant again in its UPDATE,
so when several servers share one database and this server's memory is
behind, the store refuses, memory is reloaded for that node, and the grant
is placed again (up to ``CONFLICT_RETRIES`` times). Other services ask this
one about nodes and allocations (``node``, ``nodes``, ``active``,
``allocated``...) rather than reach into its memory.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import sqlalchemy as sa
import structlog

from apportion.core.ledger import Ledger, rebuild
from apportion.core.model import Allocation, Health, Node, NodeState, ReleaseReason
from apportion.core.reasons import refusal
from apportion.core.resources import Vector
from apportion.exceptions import (
    AllocationNotFound,
    CapacityBelowAllocated,
    InsufficientResources,
    NodeExists,
)
from apportion.service.ledger_writes import GrantOp, ReleaseOp, release_data
from apportion.service.unit_of_work import Tx, UnitOfWork
from apportion.store import ledger_tables as tables

log = structlog.get_logger(__name__)

T = TypeVar("T")

HEAVY_GRANTS = 32
"""A unit with more grants than this commits from a worker thread."""

CONFLICT_RETRIES = 3
"""Times a grant is re-placed after the store found memory behind."""


def new_id() -> str:
    """A UUID version 7 (RFC 9562) as 32 hex digits: the milliseconds since
    the epoch, then 74 random bits (``os.urandom``). Ids that grow with time
    land at the right edge of the allocations' primary key index: a batch of
    grants dirties one or two of its pages, where random (version 4) ids
    dirtied a page each, every one written to SQLite's WAL at commit and read
    back from disk once the index outgrew the page cache
    (``bench/README.md``, h25-http)."""
    raw = bytearray(os.urandom(16))
    raw[:6] = (time.time_ns() // 1_000_000).to_bytes(6, "big")
    raw[6] = raw[6] & 0x0F | 0x70  # version 7
    raw[8] = raw[8] & 0x3F | 0x80  # variant RFC 4122
    return raw.hex()


class LedgerService:
    """The ledger's use cases over one store."""

    def __init__(self, uow: UnitOfWork, *, clock: Callable[[], float] = time.time) -> None:
        self.uow = uow
        self.clock = clock
        self._memory = Ledger()
        """The ledger in memory: others read it through the query methods below."""
        self._in_flight: dict[str, dict[str, GrantOp | ReleaseOp]] = {}

    # -- what others ask --------------------------------------------------------------

    @property
    def nodes(self) -> Mapping[str, Node]:
        return self._memory.nodes

    def node(self, name: str) -> Node:
        """The node (NodeNotFound, 404, when there is none)."""
        return self._memory.node(name)

    def active(self) -> Mapping[str, Allocation]:
        return self._memory.active()

    def allocated(self, name: str) -> dict[str, int]:
        return self._memory.allocated(name)

    def free(self, name: str) -> dict[str, int]:
        return self._memory.free(name)

    def allocations_on(self, name: str) -> list[Allocation]:
        return self._memory.allocations_on(name)

    # -- start and stop --------------------------------------------------

    def load(self) -> None:
        """Rebuild memory from the store (at start)."""
        self.uow.start_following()
        nodes, active = self.uow.read_now(lambda conn: (tables.load_nodes(conn),
                                                        tables.load_active_allocations(conn)))
        self._memory = rebuild(nodes, active)
        log.info("ledger_loaded", nodes=len(nodes), active_allocations=len(active))

    # -- nodes -----------------------------------------------------------

    async def register_node(self, node: Node) -> Node:
        now = self.clock()
        node = _stamped(node, created=now, updated=now)
        node = self._memory.add_node(node)

        def write(conn: sa.Connection) -> None:
            try:
                with conn.begin_nested():
                    tables.insert_node(conn, node)
            except sa.exc.IntegrityError as exc:
                raise NodeExists(f"node {node.name} already exists", node=node.name) from exc
            self.uow.event(conn, "node.registered", node.name, {"resources": dict(node.resources)})

        try:
            await self.uow.write(write)
        except BaseException:
            self._memory.forget_node(node.name)
            raise
        return node

    async def update_node(self, node: Node) -> Node:
        old = self._memory.node(node.name)
        node = _stamped(node, created=old.created_at, updated=self.clock())
        node = self._memory.update_node(node)

        def write(conn: sa.Connection) -> None:
            tables.lock_nodes(conn, [node.name])
            try:
                with conn.begin_nested():
                    tables.update_node(conn, node)
            except sa.exc.IntegrityError as exc:
                raise CapacityBelowAllocated(
                    f"node {node.name}: capacity is below what is allocated (another server "
                    "granted it)",
                    node=node.name,
                ) from exc
            self.uow.event(conn, "node.updated", node.name, {"state": node.state.value})

        try:
            await self.uow.write(write)
        except BaseException:
            await self._reload_nodes([node.name])
            raise
        return node

    async def set_node_state(self, name: str, state: NodeState) -> Node:
        node = self._memory.node(name)
        return await self.update_node(replace(node, state=state))

    async def delete_node(self, name: str, *, force: bool) -> list[Allocation]:
        self._memory.node(name)
        released = self._memory.remove_node(name, force=force, now=self.clock())

        def write(conn: sa.Connection) -> None:
            tables.lock_nodes(conn, [name])
            for alloc in released:
                if tables.apply_release(conn, alloc):
                    self.uow.event(conn, "allocation.released", alloc.node, release_data(alloc))
            tables.delete_node(conn, name)
            self.uow.event(conn, "node.deleted", name, {"released": [a.id for a in released]})

        try:
            await self.uow.write(write)
        except BaseException:
            await self._reload_nodes([name])
            raise
        return released

    # -- allocations -----------------------------------------------------

    async def grant(
        self,
        request: Vector,
        *,
        node: str | None = None,
        owner: str | None = None,
        labels: Mapping[str, str] | None = None,
        devices: Mapping[str, tuple[str, ...]] | None = None,
    ) -> Allocation:
        """Grant ``request``; answered only once the grant is durable."""
        for attempt in range(CONFLICT_RETRIES + 1):
            alloc = self._memory.grant(
                new_id(),
                request,
                now=self.clock(),
                node=node,
                owner=owner,
                labels=dict(labels or {}),
                devices=devices,
            )
            try:
                granted = await self._submit(GrantOp(alloc))
            except BaseException:
                self._memory.undo(alloc)
                raise
            if granted:
                return alloc
            # The store knew better: another server holds what memory thought
            # free. Memory takes the store's word and placement runs again.
            self._memory.undo(alloc)
            log.info("grant_conflict", node=alloc.node, attempt=attempt)
            await self._reload_nodes([alloc.node])
        raise InsufficientResources(
            refusal(self._memory.shortages(node, request) if node else []),
            nodes_considered=1 if node else 0,
        )

    # -- changes that carry their ledger change -------------------------------

    def reserve(self, request: Vector, *, node: str, owner: str | None,
                labels: Mapping[str, str], devices: Mapping[str, tuple[str, ...]] | None
                ) -> Allocation:
        """Take a grant in memory for a change that will record it
        (``commit_unit``); until then it is in flight, as a grant is."""
        alloc = self._memory.grant(new_id(), request, now=self.clock(), node=node, owner=owner,
                                  labels=dict(labels), devices=devices)
        self._in_flight.setdefault(alloc.node, {})[alloc.id] = GrantOp(alloc)
        return alloc

    def unreserve(self, alloc: Allocation) -> None:
        """Give back a reserved grant that will not be committed."""
        self._memory.undo(alloc)
        self._in_flight.get(alloc.node, {}).pop(alloc.id, None)

    async def commit_unit(self, work: Callable[[Tx], T], *,
                          grants: Sequence[Allocation] = (), heavy: bool = False) -> T:
        """Commit ``work`` with ``grants`` (taken by ``reserve``) in one
        savepoint of a shared transaction; then bring memory level with what
        it released. A refused change leaves nothing: its grants are undone."""

        def write(conn: sa.Connection) -> tuple[T, list[Allocation]]:
            tx = Tx(conn, self.uow.events, self.clock())
            tx.grant_all(list(grants))
            result = work(tx)
            tx.flush()
            return result, tx.released

        try:
            committed: tuple[T, list[Allocation]] = await self.uow.write_unit(
                write, heavy=heavy or len(grants) > HEAVY_GRANTS)
            result, released = committed
        except BaseException:
            for alloc in grants:
                self._memory.undo(alloc)
            raise
        finally:
            for alloc in grants:
                self._in_flight.get(alloc.node, {}).pop(alloc.id, None)
        self.forget_released(released)
        return result

    def forget_released(self, released: Iterable[Allocation]) -> None:
        """Memory catches up with releases the store has committed."""
        for alloc in released:
            if alloc.id in self._memory.active():
                assert alloc.reason is not None and alloc.released_at is not None
                self._memory.release(alloc.id, alloc.reason, alloc.released_at)

    async def release(self, alloc_id: str, reason: ReleaseReason) -> Allocation:
        """Release an allocation; releasing a released one answers it again."""
        if alloc_id in self._memory.active():
            released = self._memory.release(alloc_id, reason, self.clock())
        else:
            # Not active here: already released, or granted by another server.
            stored = await self.uow.read(lambda conn: tables.load_allocation(conn, alloc_id))
            if stored is None:
                raise AllocationNotFound(f"allocation {alloc_id} not found", id=alloc_id)
            if not stored.active:
                return stored
            released = stored.released(reason, self.clock())
        result: Allocation = await self._submit(ReleaseOp(released))
        return result

    async def _submit(self, op: GrantOp | ReleaseOp) -> Any:
        """Queue a grant or release, remembered as in flight until it commits
        so a reload from the store in the meantime can re-apply it."""
        node = op.alloc.node
        pending = self._in_flight.get(node)
        if pending is None:
            pending = self._in_flight[node] = {}
        pending[op.alloc.id] = op
        try:
            return await self.uow.submit_ledger_op(op)
        finally:
            pending.pop(op.alloc.id, None)

    async def get_allocation(self, alloc_id: str) -> Allocation:
        active = self._memory.active().get(alloc_id)
        if active is not None:
            return active
        stored = await self.uow.read(lambda conn: tables.load_allocation(conn, alloc_id))
        if stored is None:
            raise AllocationNotFound(f"allocation {alloc_id} not found", id=alloc_id)
        return stored

    async def list_allocations(self, *, node: str | None, owner: str | None,
                               state: str | None, limit: int,
                               offset: int) -> list[Allocation]:
        """Allocations as stored, newest first."""
        rows: list[Allocation] = await self.uow.read(lambda conn: tables.list_allocations(
            conn, node=node, owner=owner, state=state, limit=limit, offset=offset))
        return rows

    # -- reading and syncing ---------------------------------------------

    async def sync_from_store(self) -> list[tuple[int, str, str, str]]:
        """Apply ledger changes other servers committed since we last looked;
        returns their events ``(id, kind, subject, origin)`` for the other
        caches of this server to follow (jobs, agents)."""
        theirs = await self.uow.others_events()
        touched = sorted({subject for _, kind, subject, _ in theirs
                          if kind.startswith(("node.", "allocation."))})
        if touched:
            await self._reload_nodes(touched)
        return theirs

    async def _reload_nodes(self, names: list[str]) -> None:
        """Take these nodes as the store has them, then re-apply this
        server's own writes that are still on their way to it."""

        def load(conn: sa.Connection) -> tuple[list[Node], list[Allocation]]:
            return tables.load_nodes(conn, names), tables.load_active_allocations(conn, names)

        nodes, active = await self.uow.read(load)
        by_node: dict[str, list[Allocation]] = {}
        for alloc in active:
            by_node.setdefault(alloc.node, []).append(alloc)
        for node in nodes:
            self._memory.replace_node(node, by_node.get(node.name, []))
            for op in list(self._in_flight.get(node.name, {}).values()):
                self._reapply(op)
        for name in set(names) - {n.name for n in nodes}:
            self._memory.forget_node(name)

    def _reapply(self, op: GrantOp | ReleaseOp) -> None:
        alloc = op.alloc
        held = alloc.id in self._memory.active()
        if isinstance(op, ReleaseOp) and held:
            self._memory.release(alloc.id, ReleaseReason.RELEASED, self.clock())
        elif isinstance(op, GrantOp) and not held and not self._memory.shortages(
            alloc.node, alloc.resources
        ):
            # If it no longer fits, the store will refuse it too.
            self._memory.restore(alloc)


def _stamped(node: Node, *, created: float, updated: float) -> Node:
    return replace(node, created_at=created, updated_at=updated)


__all__ = ["Health", "LedgerService", "new_id"]
