"""The stored event log: every state change, in commit order, readable after an id."""

from __future__ import annotations

import json
from typing import Any

import orjson
import sqlalchemy as sa

from apportion.core.records import Event
from apportion.store.ledger_tables import insert_rows
from apportion.store.schema import events

EVENTS_LOCK = 7263515
"""PostgreSQL advisory lock held from an event's INSERT to its commit."""

CHANNEL = "apportion_events"
"""PostgreSQL NOTIFY channel: a transaction that writes events notifies it
at commit, so the other servers read the new events at once instead of at
their next poll (identical notifications of one transaction fold into one)."""
NOTIFY = f"SELECT pg_notify('{CHANNEL}', '')"


def insert_events(conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        # Ids come from a sequence at INSERT, not at commit: without this a
        # reader could see id 2 committed, move past it, and never see id 1
        # committing later. Holding the lock until commit hands ids out in
        # commit order (SQLite has one writer, so it already does).
        conn.execute(sa.text(f"SELECT pg_advisory_xact_lock({EVENTS_LOCK})"))
        conn.execute(sa.text(NOTIFY))
    # One multi-row INSERT, not executemany: see ledger_tables on batches.
    insert_rows(conn, events, rows)


def events_after(conn: sa.Connection, after: int, limit: int = 1000) -> list[Event]:
    # ``data`` read as its stored text and decoded here with orjson: the
    # event stream reads back every event written, and the stdlib decoder
    # behind the JSON column type was most of that cost.
    rows = conn.execute(
        sa.select(events.c.id, events.c.kind, events.c.subject, events.c.origin,
                  sa.cast(events.c.data, sa.Text), events.c.at)
        .where(events.c.id > after).order_by(events.c.id).limit(limit)
    )
    return [Event(i, kind, subject, origin, _decode(data), at)
            for i, kind, subject, origin, data, at in rows]


def _decode(text: str) -> Any:
    """orjson, or the stdlib where orjson refuses (NaN, say): what the JSON
    column type would have answered. Data is written by orjson, so integers
    stay within 64 bits, where the two agree."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def subjects_after(conn: sa.Connection, after: int,
                   limit: int = 10_000) -> list[tuple[int, str, str, str]]:
    """``(id, kind, subject, origin)`` of the events after ``after``, oldest
    first: what a server following the others needs, without decoding data."""
    rows = conn.execute(
        sa.select(events.c.id, events.c.kind, events.c.subject, events.c.origin)
        .where(events.c.id > after).order_by(events.c.id).limit(limit)
    )
    return [(r[0], r[1], r[2], r[3]) for r in rows]


def last_event_id(conn: sa.Connection) -> int:
    return int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(events.c.id), 0))).scalar_one())
