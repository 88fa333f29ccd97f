"""Reading and writing task usage records (SQLAlchemy Core).

One row per finished task that ran: what it asked for (base units, plus
``runtime_s`` when the job gave an estimate) and what it used (``memory``
peak bytes, ``cpu_seconds``, ``gpu_memory`` peak bytes, ``gpu_util`` mean
percent, ``runtime_s``). Written in the transaction that ends the task, once
per task id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from apportion.core.records import UsageRow
from apportion.store.schema import task_usage

COMMAND_MAX = 1024
# Built once: a statement made per call (with ``.values``) cost more than the
# insert itself, on every task end.
_INSERT_USAGE = {
    "sqlite": sqlite.insert(task_usage).on_conflict_do_nothing(index_elements=["task_id"]),
    "postgresql": postgresql.insert(task_usage).on_conflict_do_nothing(
        index_elements=["task_id"]),
}




def insert_usage(conn: sa.Connection, row: UsageRow) -> None:
    """Store ``row`` once: a repeated exit report leaves the first record."""
    insert_usage_rows(conn, [row])


def insert_usage_rows(conn: sa.Connection, rows: Sequence[UsageRow]) -> None:
    """Store each of ``rows`` once, in order, in one statement (``insert_usage``)."""
    values = [{
        "task_id": row.task_id, "job_id": row.job_id, "name": row.name[:253],
        "owner": row.owner[:253], "queue": row.queue[:253],
        "command": None if row.command is None else row.command[:COMMAND_MAX],
        "state": row.state, "requested": dict(row.requested), "used": dict(row.used),
        "started_at": row.started_at, "finished_at": row.finished_at,
    } for row in rows]
    conn.execute(_INSERT_USAGE["postgresql" if conn.dialect.name == "postgresql" else "sqlite"],
                 values[0] if len(values) == 1 else values)


def _ints(raw: Any) -> dict[str, int]:
    if isinstance(raw, str | bytes):
        raw = orjson.loads(raw)
    out: dict[str, int] = {}
    for key, value in dict(raw or {}).items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[str(key)] = int(value)
    return out


def _row(r: Mapping[str, Any]) -> UsageRow:
    return UsageRow(r["task_id"], r["job_id"], r["name"], r["owner"], r["queue"], r["command"],
                    r["state"], _ints(r["requested"]), _ints(r["used"]), r["started_at"],
                    float(r["finished_at"]))


def load_usage(conn: sa.Connection, *, name: str | None = None, owner: str | None = None,
               states: tuple[str, ...] | None = None, limit: int = 5000) -> list[UsageRow]:
    """The most recent records whose name is ``name`` or whose owner is
    ``owner`` (either one matches; neither given: all), newest first."""
    t = task_usage
    query = sa.select(t)
    either = [c for c in ((t.c.name == name) if name is not None else None,
                          (t.c.owner == owner) if owner is not None else None) if c is not None]
    if either:
        query = query.where(sa.or_(*either))
    if states:
        query = query.where(t.c.state.in_(states))
    query = query.order_by(t.c.finished_at.desc(), t.c.task_id).limit(limit)
    return [_row(dict(r)) for r in conn.execute(query).mappings()]


def count_usage(conn: sa.Connection) -> int:
    return int(conn.execute(sa.select(sa.func.count()).select_from(task_usage)).scalar_one())
