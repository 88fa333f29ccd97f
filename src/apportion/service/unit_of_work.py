"""A state change and the ledger change it implies, committed together.

A task that starts holds its grant from the same transaction that records
it; a task that ends releases its allocation in the transaction that ends
it. ``Tx`` is what such a change writes through: grants and releases with
the same conditional statements as every other ledger write, events, and
the leader's fence. It records what it granted and released so that the
ledger service can bring memory level once the transaction has committed;
it touches no memory itself, because the committer may run it again after
a retryable error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from apportion.core.model import Allocation, ReleaseReason
from apportion.exceptions import NotLeader, Refused
from apportion.store import ledger_tables as tables
from apportion.store.schema import cluster_leader


class Tx:
    """One unit's writes inside the shared transaction."""

    def __init__(self, conn: sa.Connection, events: Callable[[sa.Connection, list[tuple[
            str, str, dict[str, Any]]]], None], now: float) -> None:
        self.conn = conn
        self.now = now
        self._events = events
        self.granted: list[Allocation] = []
        self.released: list[Allocation] = []

    def fence(self, epoch: int | None) -> None:
        """Refuse the whole change unless ``epoch`` is still the leader's.

        On PostgreSQL the leader row is read FOR SHARE: a new leader's epoch
        change waits for this transaction, and a transaction after it reads
        the new epoch, so a deposed leader's late write can never commit."""
        if epoch is None:
            return
        query = sa.select(cluster_leader.c.epoch).where(cluster_leader.c.id == 1)
        if self.conn.dialect.name == "postgresql":
            query = query.with_for_update(read=True)
        current = self.conn.execute(query).scalar_one_or_none()
        if current != epoch:
            raise NotLeader(f"leader epoch {epoch} was superseded by {current}; this server "
                            "no longer leads", epoch=epoch, current=current)

    def grant_all(self, allocs: list[Allocation]) -> None:
        """Record grants decided in memory; the stored balances must agree.
        Node rows are locked first in one sorted order (PostgreSQL), so two
        servers' changes over the same nodes queue instead of deadlocking."""
        if allocs and self.conn.dialect.name == "postgresql":
            tables.lock_nodes(self.conn, {a.node for a in allocs})
        for alloc in allocs:
            self.grant(alloc)

    def grant(self, alloc: Allocation) -> None:
        if not tables.apply_grant(self.conn, alloc):
            raise Refused(f"node {alloc.node} no longer has room for this grant (another "
                          "server granted first)", node=alloc.node)
        self.granted.append(alloc)
        self.event("allocation.granted", alloc.node, {
            "id": alloc.id, "owner": alloc.owner, "resources": dict(alloc.resources),
            "devices": {r: list(d) for r, d in alloc.devices.items()}})

    def release(self, alloc_id: str, reason: ReleaseReason) -> Allocation | None:
        """Release an allocation as it is stored; None when it was not active."""
        stored = tables.load_allocation(self.conn, alloc_id)
        if stored is None or not stored.active:
            return None
        released = stored.released(reason, self.now)
        if not tables.apply_release(self.conn, released):
            return None
        self.released.append(released)
        self.event("allocation.released", released.node, release_data(released))
        return released

    def event(self, kind: str, subject: str, data: dict[str, Any]) -> None:
        self._events(self.conn, [(kind, subject, data)])


def release_data(alloc: Allocation) -> dict[str, Any]:
    return {
        "id": alloc.id,
        "owner": alloc.owner,
        "reason": alloc.reason.value if alloc.reason else None,
        "resources": dict(alloc.resources),
    }
