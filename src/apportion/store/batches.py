"""Writing one batch of grants and releases: everything, or a refusal.

``write_batch`` applies a whole batch with a handful of statements whatever
its size, or answers False as soon as the stored rows disagree with it (a
release whose row is no longer active, a device already held, a balance
that would leave ``[0, capacity]``, a node row that is gone). On False the
caller must roll back the whole transaction: some of its statements may
have been applied. Nothing here commits.

PostgreSQL gets its own path, built around two costs that dominate there:

- Round trips. Each statement waits for the server, and the writing thread
  then waits again for the GIL, which the event loop holds for up to the
  switch interval (5 ms) at a time. The batch's statements are therefore
  sent in one psycopg pipeline: one round trip for all of them, then one
  for COMMIT.
- Statement text and parameters. The statements have a fixed text whatever
  the batch size: the rows travel as one JSON document per statement
  (``json_to_recordset``), made by orjson in C. psycopg parses each text
  once and prepares it on the server, instead of splitting a new multi-row
  ``VALUES`` text of thousands of placeholders for every batch, and it
  adapts one string instead of thousands of values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import sqlalchemy as sa

from apportion.core.model import Allocation
from apportion.store import event_log
from apportion.store import ledger_tables as tables


def write_batch(conn: sa.Connection, grants: Sequence[Allocation],
                releases: Sequence[Allocation], events: list[dict[str, Any]]) -> bool:
    """Write releases, grants, the net balance change of every (node,
    resource) they touch and their events; False when the store disagrees
    (then roll the transaction back)."""
    if conn.dialect.name == "postgresql":
        return _write_postgres(conn, grants, releases, events)
    # SQLite: one writer holds the database, so no row locks to order.
    with tables.on_cursor(conn):
        if not (
            tables.release_many(conn, releases)
            and tables.grant_many(conn, grants)
            and tables.shift_balances(conn, tables.balance_deltas(grants, releases))
        ):
            return False
        event_log.insert_events(conn, events)
    return True


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


_LOCK_NODES = (
    "SELECT node FROM node_resources WHERE node IN (SELECT json_array_elements_text(%s::json)) "
    "ORDER BY node, resource FOR UPDATE"
)
_MARK_RELEASED = (
    "UPDATE allocations SET state = 'released', reason = v.why, released_at = v.at "
    "FROM json_to_recordset(%s::json) AS v(id text, why text, at float8) "
    "WHERE allocations.id = v.id AND allocations.state = 'active'"
)
_FREE_DEVICES = (
    "UPDATE devices SET allocation_id = NULL "
    "WHERE allocation_id IN (SELECT json_array_elements_text(%s::json))"
)
_TAKE_DEVICES = (
    "UPDATE devices SET allocation_id = v.a "
    "FROM json_to_recordset(%s::json) AS v(n text, r text, d text, a text) "
    "WHERE devices.node = v.n AND devices.resource = v.r AND devices.device_id = v.d "
    "AND devices.allocation_id IS NULL"
)
_INSERT_ALLOCATIONS = (
    "INSERT INTO allocations (id, node, owner, resources, devices, labels, state, reason, "
    "created_at, released_at) "
    "SELECT v.id, v.node, v.owner, v.resources, v.devices, v.labels, v.state, v.reason, "
    "v.created_at, v.released_at "
    "FROM json_to_recordset(%s::json) AS v(id text, node text, owner text, resources json, "
    "devices json, labels json, state text, reason text, created_at float8, released_at float8)"
)
# The bounds are compared in numeric: a bigint sum past 2^63-1 would be an
# error instead of a non-match.
_SHIFT_BALANCES = (
    "UPDATE node_resources SET allocated = node_resources.allocated + v.q "
    "FROM json_to_recordset(%s::json) AS v(n text, r text, q bigint) "
    "WHERE node_resources.node = v.n AND node_resources.resource = v.r "
    "AND node_resources.allocated::numeric + v.q BETWEEN 0 AND node_resources.capacity"
)
_EVENTS_LOCK = f"SELECT pg_advisory_xact_lock({event_log.EVENTS_LOCK})"
_INSERT_EVENTS = (
    "INSERT INTO events (kind, subject, origin, data, at) "
    "SELECT v.kind, v.subject, v.origin, v.data, v.at "
    "FROM ROWS FROM (json_to_recordset(%s::json) "
    "AS (kind text, subject text, origin text, data json, at float8)) "
    "WITH ORDINALITY AS v(kind, subject, origin, data, at, i) ORDER BY v.i"
)


def _write_postgres(conn: sa.Connection, grants: Sequence[Allocation],
                    releases: Sequence[Allocation], events: list[dict[str, Any]]) -> bool:
    import psycopg

    nodes = sorted({a.node for a in grants} | {a.node for a in releases})
    deltas = [(n, r, q) for (n, r), q in tables.balance_deltas(grants, releases).items() if q]
    takes = [(a.node, r, d, a.id) for a in grants for r, ids in a.devices.items() for d in ids]
    held = [a.id for a in releases if a.devices]
    raw: Any = conn.connection.dbapi_connection
    checks: list[tuple[Any, int]] = []
    try:
        with raw.pipeline():
            # Node rows first, in one sorted order: two servers' batches over
            # the same nodes queue instead of deadlocking.
            raw.execute(_LOCK_NODES, (_json(nodes),))
            if releases:
                cur = raw.execute(_MARK_RELEASED, (_json([
                    {"id": a.id, "why": a.reason.value if a.reason else None,
                     "at": a.released_at} for a in releases]),))
                checks.append((cur, len(releases)))
                if held:
                    raw.execute(_FREE_DEVICES, (_json(held),))
            if takes:
                cur = raw.execute(_TAKE_DEVICES, (_json([
                    {"n": n, "r": r, "d": d, "a": a} for n, r, d, a in takes]),))
                checks.append((cur, len(takes)))
            if grants:
                raw.execute(_INSERT_ALLOCATIONS, (_json([{
                    "id": a.id, "node": a.node, "owner": a.owner, "resources": dict(a.resources),
                    "devices": dict(a.devices), "labels": a.labels, "state": a.state.value,
                    "reason": a.reason.value if a.reason else None,
                    "created_at": a.created_at, "released_at": a.released_at,
                } for a in grants]),))
            if deltas:
                cur = raw.execute(_SHIFT_BALANCES, (_json([
                    {"n": n, "r": r, "q": q} for n, r, q in deltas]),))
                checks.append((cur, len(deltas)))
            if events:
                # Held to commit: event ids are handed out in commit order
                # (see event_log.insert_events).
                raw.execute(_EVENTS_LOCK)
                raw.execute(event_log.NOTIFY)
                raw.execute(_INSERT_EVENTS, (_json(events),))
    except psycopg.Error as exc:
        # Raised as SQLAlchemy would have: the committer retries lock
        # timeouts and deadlock or serialization aborts (OperationalError).
        if raw.broken:
            # The server went away: drop this connection, and let the pool
            # open fresh ones instead of handing out its other stale ones.
            conn.invalidate()
            conn.engine.dispose(close=False)
        wrap = sa.exc.OperationalError if isinstance(exc, psycopg.OperationalError) \
            else sa.exc.DBAPIError
        raise wrap("batch write", None, exc) from exc
    return all(cur.rowcount == expected for cur, expected in checks)
