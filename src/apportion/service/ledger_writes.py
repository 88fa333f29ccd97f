"""The ledger's batchable writes: grants and releases, many to a transaction.

A grant or a release decided in memory is queued as a ``GrantOp`` or a
``ReleaseOp``; the group committer hands every one waiting to ``write_batch``
in one transaction. Releases go first (they only free capacity, and memory
already counted them free), then all grants, a few statements for the whole
batch (``store/batches.py``). If any conditional row did not match (another
server, or a release of a grant from this same batch), the batch raises
``BatchConflict``: the committer rolls the transaction back and
``write_each`` applies the ops one by one, in order, to give each its own
answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from apportion.core.model import Allocation
from apportion.service.committer import BatchConflict
from apportion.store import batches, event_log
from apportion.store import ledger_tables as tables

EventSpec = tuple[str, str, dict[str, Any]]
EventRows = Callable[[list[EventSpec]], list[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class GrantOp:
    alloc: Allocation


@dataclass(frozen=True, slots=True)
class ReleaseOp:
    alloc: Allocation


LedgerOp = GrantOp | ReleaseOp


def write_batch(event_rows: EventRows, conn: sa.Connection, ops: list[LedgerOp]) -> list[Any]:
    """Every op in the caller's transaction, or ``BatchConflict``."""
    grants = [op.alloc for op in ops if isinstance(op, GrantOp)]
    releases = [op.alloc for op in ops if isinstance(op, ReleaseOp)]
    if not batches.write_batch(conn, grants, releases, event_rows([event_of(op) for op in ops])):
        raise BatchConflict
    return [True if isinstance(op, GrantOp) else op.alloc for op in ops]


def write_each(event_rows: EventRows, conn: sa.Connection, ops: list[LedgerOp]) -> list[Any]:
    """One op at a time: a grant answers True or False, a release the
    allocation as released (by this op or by whoever was first)."""
    tables.lock_nodes(conn, {op.alloc.node for op in ops})
    return [_write_one(event_rows, conn, op) for op in ops]


def _write_one(event_rows: EventRows, conn: sa.Connection, op: LedgerOp) -> Any:
    if isinstance(op, GrantOp):
        if not tables.apply_grant(conn, op.alloc):
            return False
        event_log.insert_events(conn, event_rows([event_of(op)]))
        return True
    if tables.apply_release(conn, op.alloc):
        event_log.insert_events(conn, event_rows([event_of(op)]))
        return op.alloc
    stored = tables.load_allocation(conn, op.alloc.id)  # someone else released it first
    return stored if stored is not None else op.alloc


def event_of(op: LedgerOp) -> EventSpec:
    a = op.alloc
    if isinstance(op, GrantOp):
        return "allocation.granted", a.node, {
            "id": a.id, "owner": a.owner, "resources": dict(a.resources),
            "devices": {r: list(d) for r, d in a.devices.items()} if a.devices else {},
        }
    return "allocation.released", a.node, release_data(a)


def release_data(alloc: Allocation) -> dict[str, Any]:
    return {
        "id": alloc.id,
        "owner": alloc.owner,
        "reason": alloc.reason.value if alloc.reason else None,
        "resources": dict(alloc.resources),
    }
