"""The unit of work: every service's way to the store.

``UnitOfWork`` owns the group committer, reads on pooled connections off the
event loop, and the events every change is written with (and their reading
back, to follow the other servers). Services get it from the composition
root and ask it to read, to write alone, or to write a unit; none builds its
own connection or reaches through another service to the database.

A state change and the ledger change it implies commit together: a task
that starts holds its grant from the same transaction that records it; a
task that ends releases its allocation in the transaction that ends it.
``Tx`` is what such a change writes through: grants and releases with the
same conditional statements as every other ledger write, events, and the
leader's fence. It records what it granted and released so that the ledger
service can bring memory level once the transaction has committed; it
touches no memory itself, because the committer may run it again after a
retryable error.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa

from apportion.core.model import Allocation, ReleaseReason
from apportion.core.records import UsageRow
from apportion.exceptions import NotLeader, Refused
from apportion.service import ledger_writes
from apportion.service.committer import GroupCommitter
from apportion.service.ledger_writes import LedgerOp, release_data
from apportion.store import event_log
from apportion.store import ledger_tables as tables
from apportion.store.database import writer_engine
from apportion.store.schema import cluster_leader
from apportion.store.usage_tables import insert_usage_rows

T = TypeVar("T")


class LaterRows(Protocol):
    """Rows the units of one transaction leave to write after the last of
    them (``Tx.later``)."""

    def write_out(self, conn: sa.Connection) -> None: ...


L = TypeVar("L", bound=LaterRows)
EventSpec = tuple[str, str, dict[str, Any]]


class UnitOfWork:
    """Reads, writes and events over one store."""

    def __init__(self, engine: sa.Engine, *, origin: str, batch_max: int = 256,
                 clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.origin = origin
        self.clock = clock
        self._writer = writer_engine(engine)
        self._committer = GroupCommitter(
            self._writer, partial(ledger_writes.write_batch, self.event_rows),
            write_each=partial(ledger_writes.write_each, self.event_rows), batch_max=batch_max,
            units_scope=_shared_statements)
        self.last_event_id = 0

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @property
    def shared(self) -> bool:
        """Whether other servers may write this store too. SQLite has one
        server by construction (its leader lock is a file lock), so what that
        server holds in memory is all there is; PostgreSQL may have several."""
        return self.dialect != "sqlite"

    def start_following(self) -> None:
        """Follow the events written after now (at start)."""
        with self.engine.connect() as conn:
            self.last_event_id = event_log.last_event_id(conn)

    def close(self) -> None:
        self._committer.close()
        if self._writer is not self.engine:
            self._writer.dispose()
        self.engine.dispose()

    # -- reading ---------------------------------------------------------------

    async def read(self, fn: Callable[[sa.Connection], T]) -> T:
        """Run a read on a pooled connection off the event loop."""

        def run() -> T:
            with self.engine.connect() as conn:
                return fn(conn)

        return await asyncio.to_thread(run)

    def read_now(self, fn: Callable[[sa.Connection], T]) -> T:
        """A read on this thread (at start, or from a worker thread)."""
        with self.engine.connect() as conn:
            return fn(conn)

    async def others_events(self) -> list[tuple[int, str, str, str]]:
        """``(id, kind, subject, origin)`` of the events other servers wrote
        since the last call (nothing of this server's own)."""
        events = await self.read(lambda conn: event_log.subjects_after(conn, self.last_event_id))
        if not events:
            return []
        self.last_event_id = events[-1][0]
        return [e for e in events if e[3] != self.origin]

    # -- writing ---------------------------------------------------------------

    async def write(self, fn: Callable[[sa.Connection], T]) -> T:
        """A write in a transaction of its own (queued with every other write)."""
        result: T = await self._committer.submit_alone(fn)
        return result

    async def write_unit(self, fn: Callable[[sa.Connection], T], *, heavy: bool = False) -> T:
        """A write that commits whole or not at all, sharing a transaction
        (one savepoint each) with others queued at the same moment."""
        result: T = await self._committer.submit_unit(fn, heavy=heavy)
        return result

    async def submit_ledger_op(self, op: LedgerOp) -> Any:
        """A grant or release for the ledger's batches (``ledger_writes``)."""
        return await self._committer.submit(op)

    @property
    def commits(self) -> tuple[int, int]:
        """Transactions committed, and the writes in them."""
        return self._committer.batches, self._committer.writes

    # -- events ---------------------------------------------------------------------

    def event(self, conn: sa.Connection, kind: str, subject: str, data: dict[str, Any]) -> None:
        """Record a state change in the caller's transaction."""
        self.events(conn, [(kind, subject, data)])

    def events(self, conn: sa.Connection, events: list[EventSpec]) -> None:
        shared = conn.info.get(_SHARED)
        if shared is not None:
            shared.events.extend(self.event_rows(events))
            return
        event_log.insert_events(conn, self.event_rows(events))

    def event_rows(self, events: list[EventSpec]) -> list[dict[str, Any]]:
        now = self.clock()
        origin = self.origin
        return [{"kind": k, "subject": s, "origin": origin, "data": d, "at": now}
                for k, s, d in events]


_SHARED = "apportion.units"
"""The key of ``_Shared`` in a connection's ``info`` while units run in it
without savepoints."""

EVENTS_AT_ONCE = 1000
"""Events written in one statement at most (SQLite's bound parameters)."""


class _Shared:
    """What units sharing a transaction without savepoints share: their
    events, written after the last of them in one statement (in the order
    recorded, so with the same ids as unit by unit: SQLite has one writer and
    PostgreSQL hands ids out under the events lock), and the leader's epoch
    once read (the row stays as read until the transaction ends: SQLite
    reads one snapshot, PostgreSQL holds it FOR SHARE). A unit that fails
    rolls the whole transaction back, and the units run again each in a
    savepoint, without this.

    On SQLite their releases and usage rows wait for the end too, three
    statements for all of them instead of three for each task's end
    (``bench/README.md``, h23-e2e). Nothing in a batch reads what they
    change before then: a release frees capacity in memory only once it has
    committed, so no grant of the same batch counts on it (a grant's check
    in SQL can only be stricter meanwhile), and a usage row is read by no
    change. Should a release then find its row no longer active, the batch
    is refused and its units run again each in a savepoint, releasing as
    they go: what they would have done without this. PostgreSQL keeps them
    in place, where its row locks are taken. So do their grants (one
    statement for the balances, one for the allocation rows, whatever the
    count; the balances' check on the sum is the check of each unit in
    turn, as grants only add) and rows of other kinds that a service defers
    itself (``Tx.later``), all written before the releases. A unit that
    reads what they change first writes them out (``Tx.settle``)."""

    def __init__(self, later: bool) -> None:
        self.events: list[dict[str, Any]] = []
        self.epoch: tuple[int | None] | None = None
        self.later = later
        self.released: list[Allocation] = []
        self.usage: list[UsageRow] = []
        self.granted: list[Allocation] = []
        self.granted_by_id: dict[str, Allocation] = {}
        """The same grants by id (a second grant of one id is in the list
        too: its row's insert refuses the batch, as it would the unit)."""
        self.later_rows: dict[type[Any], LaterRows] = {}

    def write_ahead(self, conn: sa.Connection) -> None:
        """Write the grants and rows left for later, and forget them."""
        if self.granted:
            granted, self.granted, self.granted_by_id = self.granted, [], {}
            _write_grants(conn, granted)
        for rows in self.later_rows.values():
            rows.write_out(conn)


def _shared_statements(conn: sa.Connection, run: Callable[[], list[Any]]) -> list[Any]:
    shared = conn.info[_SHARED] = _Shared(later=conn.dialect.name == "sqlite")
    try:
        results = run()
    finally:
        del conn.info[_SHARED]
    shared.write_ahead(conn)
    if shared.released:
        _release_all(conn, shared.released)
    if shared.usage:
        insert_usage_rows(conn, shared.usage)
    for begin in range(0, len(shared.events), EVENTS_AT_ONCE):
        event_log.insert_events(conn, shared.events[begin:begin + EVENTS_AT_ONCE])
    return results


def _write_grants(conn: sa.Connection, allocs: list[Allocation]) -> None:
    """Grants' balances and rows (three statements at most, whatever the
    count): refused whole when a balance or a device disagrees."""
    if not tables.shift_balances(conn, tables.balance_deltas(allocs, ())) \
            or not tables.grant_many(conn, allocs):
        nodes = sorted({a.node for a in allocs})
        raise Refused(f"node {', '.join(nodes)} no longer has room for this grant "
                      "(another server granted first)", node=nodes[0])


def _release_all(conn: sa.Connection, released: list[Allocation]) -> None:
    """The releases of a batch's units, as each unit's ``Tx.release`` would
    have written them (balances netted per node and resource)."""
    if not tables.release_many(conn, released):
        raise Refused("an allocation of this batch was no longer active; its units run "
                      "again one by one")
    if not tables.shift_balances(conn, tables.balance_deltas((), released)):
        nodes = sorted({a.node for a in released})
        raise tables.BalanceMissing(f"node {', '.join(nodes)} has no balance to return "
                                    "this batch's allocations to")


_EPOCH = sa.select(cluster_leader.c.epoch).where(cluster_leader.c.id == 1)
_EPOCH_FOR_SHARE = _EPOCH.with_for_update(read=True)


class Tx:
    """One unit's writes inside the shared transaction."""

    def __init__(self, conn: sa.Connection, events: Callable[[sa.Connection, list[tuple[
            str, str, dict[str, Any]]]], None], now: float) -> None:
        self.conn = conn
        self.now = now
        self._events = events
        self.granted: list[Allocation] = []
        self.released: list[Allocation] = []
        self._pending: list[tuple[str, str, dict[str, Any]]] = []
        self._read: dict[str, Allocation | None] = {}

    def read_with(self, alloc_id: str, stored: Allocation | None) -> None:
        """An allocation as this change has just read it (with its task):
        its release reads it no more."""
        self._read[alloc_id] = stored

    def later(self, kind: type[L]) -> L | None:
        """The rows of ``kind`` (one ``kind()`` a transaction) that this
        transaction's units write after the last of them, as releases are;
        None where each unit writes its own (PostgreSQL, or units each in a
        savepoint). What a unit leaves there it must read back from there."""
        units: _Shared | None = self.conn.info.get(_SHARED)
        if units is None or not units.later:
            return None
        rows = units.later_rows.get(kind)
        if rows is None:
            rows = units.later_rows[kind] = kind()
        return rows  # type: ignore[return-value]

    def settle(self) -> sa.Connection:
        """The connection, with what this transaction's units left for later
        written (but releases, usage and events): for a statement that reads
        what they change."""
        units: _Shared | None = self.conn.info.get(_SHARED)
        if units is not None:
            units.write_ahead(self.conn)
        return self.conn

    def fence(self, epoch: int | None) -> None:
        """Refuse the whole change unless ``epoch`` is still the leader's.

        On PostgreSQL the leader row is read FOR SHARE: a new leader's epoch
        change waits for this transaction, and a transaction after it reads
        the new epoch, so a deposed leader's late write can never commit."""
        if epoch is None:
            return
        current = self._epoch()
        if current != epoch:
            raise NotLeader(f"leader epoch {epoch} was superseded by {current}; this server "
                            "no longer leads", epoch=epoch, current=current)

    def _epoch(self) -> int | None:
        units: _Shared | None = self.conn.info.get(_SHARED)
        if units is not None and units.epoch is not None:
            return units.epoch[0]
        postgres = self.conn.dialect.name == "postgresql"
        current: int | None = self.conn.execute(
            _EPOCH_FOR_SHARE if postgres else _EPOCH).scalar_one_or_none()
        if units is not None:
            units.epoch = (current,)
        return current

    def grant_all(self, allocs: list[Allocation]) -> None:
        """Record grants decided in memory; the stored balances must agree.
        Node rows are locked first in one sorted order (PostgreSQL), so two
        servers' changes over the same nodes queue instead of deadlocking."""
        if not allocs:
            return
        if self.conn.dialect.name == "postgresql":
            tables.lock_nodes(self.conn, {a.node for a in allocs})
        units: _Shared | None = self.conn.info.get(_SHARED)
        if units is not None and units.later:
            units.granted += allocs  # written with the batch's
            units.granted_by_id.update((a.id, a) for a in allocs)
        else:
            # A unit is rolled back whole when they refuse, so a partial
            # shift never stays.
            _write_grants(self.conn, allocs)
        for alloc in allocs:
            self.granted.append(alloc)
            self.event("allocation.granted", alloc.node, {
                "id": alloc.id, "owner": alloc.owner, "resources": dict(alloc.resources),
                "devices": {r: list(d) for r, d in alloc.devices.items()}})

    def grant(self, alloc: Allocation) -> None:
        """Record one grant (``grant_all`` of one)."""
        self.grant_all([alloc])

    def release(self, alloc_id: str, reason: ReleaseReason) -> Allocation | None:
        """Release an allocation as it is stored; None when it was not active."""
        units: _Shared | None = self.conn.info.get(_SHARED)
        if alloc_id in self._read:
            stored = self._read.pop(alloc_id)
        elif units is not None and alloc_id in units.granted_by_id:
            stored = units.granted_by_id[alloc_id]  # granted in this batch, not written yet
        else:
            stored = tables.load_allocation(self.conn, alloc_id)
        if stored is None or not stored.active:
            return None
        released = stored.released(reason, self.now)
        if units is not None and units.later:
            units.released.append(released)  # written after the batch's last unit
        elif not tables.release_many(self.conn, [released]):
            return None
        elif not tables.shift_balances(self.conn, tables.balance_deltas((), [released])):
            # Never a release whose resources were not given back: the
            # transaction fails and is tried again (as ``apply_release``).
            raise tables.BalanceMissing(f"node {released.node} has no balance to return "
                                        f"allocation {released.id} to")
        self.released.append(released)
        self.event("allocation.released", released.node, release_data(released))
        return released

    def usage(self, row: UsageRow) -> None:
        """Store a task's usage record with this change."""
        units: _Shared | None = self.conn.info.get(_SHARED)
        if units is not None and units.later:
            units.usage.append(row)  # written after the batch's last unit
        else:
            insert_usage_rows(self.conn, [row])

    def event(self, kind: str, subject: str, data: dict[str, Any]) -> None:
        """Record an event with this change; written at ``flush``."""
        self._pending.append((kind, subject, data))

    def flush(self) -> None:
        """Write the change's events in one statement (a task's end has
        three, each a statement of its own before), in the order recorded."""
        if self._pending:
            pending, self._pending = self._pending, []
            self._events(self.conn, pending)


__all__ = ["LaterRows", "Tx", "UnitOfWork", "release_data"]
