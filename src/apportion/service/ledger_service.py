"""Use cases of the ledger: register, update and delete nodes; grant and
release allocations. The only code that writes allocations.

A decision is made on the in-memory ``Ledger`` (fast, indexed), then made
durable through the group committer; the caller is answered only after the
commit. The database checks every grant again in its UPDATE, so when several
servers share one database and this server's memory is behind, the store
refuses, memory is reloaded for that node, and the grant is tried once more.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import sqlalchemy as sa
import structlog

from apportion.core.ledger import Ledger, rebuild
from apportion.core.model import Allocation, Health, Node, NodeState, ReleaseReason
from apportion.core.resources import Vector
from apportion.exceptions import (
    AllocationNotFound,
    CapacityBelowAllocated,
    InsufficientResources,
    NodeExists,
)
from apportion.service.committer import BatchConflict, GroupCommitter
from apportion.service.unit_of_work import Tx, release_data
from apportion.store import batches, event_log
from apportion.store import ledger_tables as tables
from apportion.store.database import writer_engine

log = structlog.get_logger(__name__)

T = TypeVar("T")

HEAVY_GRANTS = 32
"""A unit with more grants than this commits from a worker thread."""

CONFLICT_RETRIES = 3
"""Times a grant is re-placed after the store found memory behind."""


def new_id() -> str:
    return uuid.uuid4().hex


class LedgerService:
    """The ledger's use cases over one store."""

    def __init__(
        self,
        engine: sa.Engine,
        *,
        origin: str,
        batch_max: int = 256,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.origin = origin
        self.clock = clock
        self._writer = writer_engine(engine)
        self.committer = GroupCommitter(self._writer, self._write_batch,
                                        write_each=self._write_each, batch_max=batch_max)
        self.ledger = Ledger()
        self._in_flight: dict[str, dict[str, _Grant | _Release]] = {}
        self.last_event_id = 0

    # -- start and stop --------------------------------------------------

    def load(self) -> None:
        """Rebuild memory from the store (at start, and after a lost race)."""
        with self.engine.connect() as conn:
            self.last_event_id = event_log.last_event_id(conn)
            nodes = tables.load_nodes(conn)
            active = tables.load_active_allocations(conn)
        self.ledger = rebuild(nodes, active)
        log.info("ledger_loaded", nodes=len(nodes), active_allocations=len(active))

    def close(self) -> None:
        self.committer.close()
        if self._writer is not self.engine:
            self._writer.dispose()

    # -- nodes -----------------------------------------------------------

    async def register_node(self, node: Node) -> Node:
        now = self.clock()
        node = _stamped(node, created=now, updated=now)
        node = self.ledger.add_node(node)

        def write(conn: sa.Connection) -> None:
            try:
                with conn.begin_nested():
                    tables.insert_node(conn, node)
            except sa.exc.IntegrityError as exc:
                raise NodeExists(f"node {node.name} already exists", node=node.name) from exc
            self.event(conn, "node.registered", node.name, {"resources": dict(node.resources)})

        try:
            await self.committer.submit_alone(write)
        except BaseException:
            self.ledger.forget_node(node.name)
            raise
        return node

    async def update_node(self, node: Node) -> Node:
        old = self.ledger.node(node.name)
        node = _stamped(node, created=old.created_at, updated=self.clock())
        node = self.ledger.update_node(node)

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
            self.event(conn, "node.updated", node.name, {"state": node.state.value})

        try:
            await self.committer.submit_alone(write)
        except BaseException:
            await self._reload_nodes([node.name])
            raise
        return node

    async def set_node_state(self, name: str, state: NodeState) -> Node:
        node = self.ledger.node(name)
        return await self.update_node(replace(node, state=state))

    async def delete_node(self, name: str, *, force: bool) -> list[Allocation]:
        self.ledger.node(name)
        released = self.ledger.remove_node(name, force=force, now=self.clock())

        def write(conn: sa.Connection) -> None:
            tables.lock_nodes(conn, [name])
            for alloc in released:
                if tables.apply_release(conn, alloc):
                    self.event(conn, "allocation.released", alloc.node, release_data(alloc))
            tables.delete_node(conn, name)
            self.event(conn, "node.deleted", name, {"released": [a.id for a in released]})

        try:
            await self.committer.submit_alone(write)
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
            alloc = self.ledger.grant(
                new_id(),
                request,
                now=self.clock(),
                node=node,
                owner=owner,
                labels=dict(labels or {}),
                devices=devices,
            )
            try:
                granted = await self._submit(_Grant(alloc))
            except BaseException:
                self.ledger.undo(alloc)
                raise
            if granted:
                return alloc
            # The store knew better: another server holds what memory thought
            # free. Memory takes the store's word and placement runs again.
            self.ledger.undo(alloc)
            log.info("grant_conflict", node=alloc.node, attempt=attempt)
            await self._reload_nodes([alloc.node])
        raise InsufficientResources(
            self.ledger.shortages(node, request) if node else [],
            nodes_considered=1 if node else 0,
        )

    # -- changes that carry their ledger change -------------------------------

    def reserve(self, request: Vector, *, node: str, owner: str | None,
                labels: Mapping[str, str], devices: Mapping[str, tuple[str, ...]] | None
                ) -> Allocation:
        """Take a grant in memory for a change that will record it
        (``commit_unit``); until then it is in flight, as a grant is."""
        alloc = self.ledger.grant(new_id(), request, now=self.clock(), node=node, owner=owner,
                                  labels=dict(labels), devices=devices)
        self._in_flight.setdefault(alloc.node, {})[alloc.id] = _Grant(alloc)
        return alloc

    def unreserve(self, alloc: Allocation) -> None:
        """Give back a reserved grant that will not be committed."""
        self.ledger.undo(alloc)
        self._in_flight.get(alloc.node, {}).pop(alloc.id, None)

    async def commit_unit(self, work: Callable[[Tx], T], *,
                          grants: Sequence[Allocation] = (), heavy: bool = False) -> T:
        """Commit ``work`` with ``grants`` (taken by ``reserve``) in one
        savepoint of a shared transaction; then bring memory level with what
        it released. A refused change leaves nothing: its grants are undone."""

        def write(conn: sa.Connection) -> tuple[T, list[Allocation]]:
            tx = Tx(conn, self._events, self.clock())
            tx.grant_all(list(grants))
            return work(tx), tx.released

        try:
            committed: tuple[T, list[Allocation]] = await self.committer.submit_unit(
                write, heavy=heavy or len(grants) > HEAVY_GRANTS)
            result, released = committed
        except BaseException:
            for alloc in grants:
                self.ledger.undo(alloc)
            raise
        finally:
            for alloc in grants:
                self._in_flight.get(alloc.node, {}).pop(alloc.id, None)
        self.forget_released(released)
        return result

    def forget_released(self, released: Iterable[Allocation]) -> None:
        """Memory catches up with releases the store has committed."""
        for alloc in released:
            if alloc.id in self.ledger.active():
                assert alloc.reason is not None and alloc.released_at is not None
                self.ledger.release(alloc.id, alloc.reason, alloc.released_at)

    async def release(self, alloc_id: str, reason: ReleaseReason) -> Allocation:
        """Release an allocation; releasing a released one answers it again."""
        if alloc_id in self.ledger.active():
            released = self.ledger.release(alloc_id, reason, self.clock())
        else:
            # Not active here: already released, or granted by another server.
            stored = await self.read(lambda conn: tables.load_allocation(conn, alloc_id))
            if stored is None:
                raise AllocationNotFound(f"allocation {alloc_id} not found", id=alloc_id)
            if not stored.active:
                return stored  # type: ignore[no-any-return]
            released = stored.released(reason, self.clock())
        result: Allocation = await self._submit(_Release(released))
        return result

    async def _submit(self, op: _Grant | _Release) -> Any:
        """Queue a grant or release, remembered as in flight until it commits
        so a reload from the store in the meantime can re-apply it."""
        pending = self._in_flight.setdefault(op.alloc.node, {})
        pending[op.alloc.id] = op
        try:
            return await self.committer.submit(op)
        finally:
            pending.pop(op.alloc.id, None)

    def _write_batch(self, conn: sa.Connection, ops: list[_Grant | _Release]) -> list[Any]:
        """Write a batch of grants and releases in the caller's transaction.

        Releases first (they only free capacity, and memory already counted
        them free), then all grants, a few statements for the whole batch
        (``store/batches.py``). If any conditional row did not match (another
        server, or a release of a grant from this same batch), the batch
        raises ``BatchConflict``: the committer rolls the transaction back and
        ``_write_each`` applies the ops one by one, in order, to give each
        its own answer."""
        grants = [op.alloc for op in ops if isinstance(op, _Grant)]
        releases = [op.alloc for op in ops if isinstance(op, _Release)]
        if not batches.write_batch(conn, grants, releases,
                                   self._event_rows([_event_of(op) for op in ops])):
            raise BatchConflict
        return [True if isinstance(op, _Grant) else op.alloc for op in ops]

    def _write_each(self, conn: sa.Connection, ops: list[_Grant | _Release]) -> list[Any]:
        tables.lock_nodes(conn, {op.alloc.node for op in ops})
        return [self._write_one(conn, op) for op in ops]

    def _write_one(self, conn: sa.Connection, op: _Grant | _Release) -> Any:
        if isinstance(op, _Grant):
            if not tables.apply_grant(conn, op.alloc):
                return False
            self._events(conn, [_event_of(op)])
            return True
        if tables.apply_release(conn, op.alloc):
            self._events(conn, [_event_of(op)])
            return op.alloc
        stored = tables.load_allocation(conn, op.alloc.id)  # someone else released it first
        return stored if stored is not None else op.alloc

    async def get_allocation(self, alloc_id: str) -> Allocation:
        active = self.ledger.active().get(alloc_id)
        if active is not None:
            return active
        stored = await self.read(lambda conn: tables.load_allocation(conn, alloc_id))
        if stored is None:
            raise AllocationNotFound(f"allocation {alloc_id} not found", id=alloc_id)
        return stored  # type: ignore[no-any-return]

    async def list_allocations(self, *, node: str | None, owner: str | None,
                               state: str | None, limit: int,
                               offset: int) -> list[Allocation]:
        """Allocations as stored, newest first."""
        rows: list[Allocation] = await self.read(lambda conn: tables.list_allocations(
            conn, node=node, owner=owner, state=state, limit=limit, offset=offset))
        return rows

    # -- reading and syncing ---------------------------------------------

    async def read(self, fn: Callable[[sa.Connection], Any]) -> Any:
        """Run a read on a pooled connection off the event loop."""

        def run() -> Any:
            with self.engine.connect() as conn:
                return fn(conn)

        return await asyncio.to_thread(run)

    async def sync_from_store(self) -> list[tuple[int, str, str, str]]:
        """Apply ledger changes other servers committed since we last looked;
        returns their events ``(id, kind, subject, origin)`` for the other
        caches of this server to follow (jobs, agents)."""
        events: list[tuple[int, str, str, str]] = await self.read(
            lambda conn: event_log.subjects_after(conn, self.last_event_id))
        if not events:
            return []
        self.last_event_id = events[-1][0]
        theirs = [e for e in events if e[3] != self.origin]
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

        nodes, active = await self.read(load)
        by_node: dict[str, list[Allocation]] = {}
        for alloc in active:
            by_node.setdefault(alloc.node, []).append(alloc)
        for node in nodes:
            self.ledger.replace_node(node, by_node.get(node.name, []))
            for op in list(self._in_flight.get(node.name, {}).values()):
                self._reapply(op)
        for name in set(names) - {n.name for n in nodes}:
            self.ledger.forget_node(name)

    def _reapply(self, op: _Grant | _Release) -> None:
        alloc = op.alloc
        held = alloc.id in self.ledger.active()
        if isinstance(op, _Release) and held:
            self.ledger.release(alloc.id, ReleaseReason.RELEASED, self.clock())
        elif isinstance(op, _Grant) and not held and not self.ledger.shortages(
            alloc.node, alloc.resources
        ):
            # If it no longer fits, the store will refuse it too.
            self.ledger.restore(alloc)

    def event(self, conn: sa.Connection, kind: str, subject: str, data: dict[str, Any]) -> None:
        """Record a state change in the caller's transaction."""
        self._events(conn, [(kind, subject, data)])

    def _events(self, conn: sa.Connection, events: list[tuple[str, str, dict[str, Any]]]) -> None:
        event_log.insert_events(conn, self._event_rows(events))

    def _event_rows(self, events: list[tuple[str, str, dict[str, Any]]]) -> list[dict[str, Any]]:
        now = self.clock()
        origin = self.origin
        return [{"kind": k, "subject": s, "origin": origin, "data": d, "at": now}
                for k, s, d in events]


@dataclass(frozen=True, slots=True)
class _Grant:
    alloc: Allocation


@dataclass(frozen=True, slots=True)
class _Release:
    alloc: Allocation


def _event_of(op: _Grant | _Release) -> tuple[str, str, dict[str, Any]]:
    a = op.alloc
    if isinstance(op, _Grant):
        return "allocation.granted", a.node, {
            "id": a.id, "owner": a.owner, "resources": dict(a.resources),
            "devices": {r: list(d) for r, d in a.devices.items()},
        }
    return "allocation.released", a.node, release_data(a)


def _stamped(node: Node, *, created: float, updated: float) -> Node:
    return replace(node, created_at=created, updated_at=updated)


__all__ = ["Health", "LedgerService", "new_id"]
