"""Agents' sessions: which nodes have an agent, and when each was last heard.

Any server may answer an agent, so what the leader needs to judge a node
(last heard, its heartbeat period, its latest usage) lives here, not in the
memory of the server the agent happened to reach.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa

from apportion.core.records import SessionRow
from apportion.store.schema import agent_sessions


def _row(r: Any) -> SessionRow:
    return SessionRow(**dict(r._mapping))


def load(conn: sa.Connection, nodes: Sequence[str] | None = None,
         *, with_usage: bool = True) -> list[SessionRow]:
    columns = list(agent_sessions.c) if with_usage else [
        c if c.name not in ("usage", "tasks") else sa.null().label(c.name)
        for c in agent_sessions.c]
    query = sa.select(*columns)
    if nodes is not None:
        query = query.where(agent_sessions.c.node.in_(list(nodes)))
    return [_row(r) for r in conn.execute(query.order_by(agent_sessions.c.node))]


def load_one(conn: sa.Connection, node: str) -> SessionRow | None:
    found = load(conn, [node])
    return found[0] if found else None


_HAS_AGENT = sa.select(sa.literal(1)).where(agent_sessions.c.node == sa.bindparam("b_node"))


def has_agent(conn: sa.Connection, node: str) -> bool:
    return conn.execute(_HAS_AGENT, {"b_node": node}).first() is not None


def open_session(conn: sa.Connection, row: SessionRow) -> None:
    """Insert or replace a node's session; rescans and a drain carry over."""
    values = {k: getattr(row, k) for k in SessionRow.__dataclass_fields__}
    keep = ("node", "rescans", "drain_deadline", "prior_state", "usage", "tasks",
            "heartbeat_at")
    hit = conn.execute(agent_sessions.update().where(agent_sessions.c.node == row.node)
                       .values({k: v for k, v in values.items() if k not in keep}))
    if hit.rowcount == 0:
        conn.execute(agent_sessions.insert().values(values))


def touch_many(conn: sa.Connection, seen: Iterable[dict[str, Any]]) -> None:
    """Note heartbeats and polls in one statement: each dict has ``node``,
    ``last_seen``, ``server_id`` and, for a heartbeat, ``heartbeat_at``,
    ``agent_id`` and (unless left out) ``usage`` and ``tasks``."""
    plain: list[dict[str, Any]] = []
    beats: list[dict[str, Any]] = []
    bare: list[dict[str, Any]] = []
    for s in seen:
        if "heartbeat_at" not in s:
            plain.append(s)
        else:
            (beats if "usage" in s else bare).append(s)
    if plain:
        conn.execute(agent_sessions.update().where(
            agent_sessions.c.node == sa.bindparam("b_node"),
            agent_sessions.c.last_seen < sa.bindparam("b_last_seen"),
        ).values(last_seen=sa.bindparam("b_last_seen"), server_id=sa.bindparam("b_server")),
            [{"b_node": s["node"], "b_last_seen": s["last_seen"], "b_server": s["server_id"]}
             for s in plain])
    if beats:
        conn.execute(agent_sessions.update().where(
            agent_sessions.c.node == sa.bindparam("b_node"),
        ).values(last_seen=sa.bindparam("b_last_seen"), server_id=sa.bindparam("b_server"),
                 heartbeat_at=sa.bindparam("b_at"), agent_id=sa.bindparam("b_agent"),
                 usage=sa.bindparam("b_usage", type_=sa.JSON),
                 tasks=sa.bindparam("b_tasks", type_=sa.JSON)),
            [{"b_node": s["node"], "b_last_seen": s["last_seen"], "b_server": s["server_id"],
              "b_at": s["heartbeat_at"], "b_agent": s["agent_id"], "b_usage": s["usage"],
              "b_tasks": s["tasks"]} for s in beats])
    if bare:  # a heartbeat without its readings
        conn.execute(agent_sessions.update().where(
            agent_sessions.c.node == sa.bindparam("b_node"),
        ).values(last_seen=sa.bindparam("b_last_seen"), server_id=sa.bindparam("b_server"),
                 heartbeat_at=sa.bindparam("b_at"), agent_id=sa.bindparam("b_agent")),
            [{"b_node": s["node"], "b_last_seen": s["last_seen"], "b_server": s["server_id"],
              "b_at": s["heartbeat_at"], "b_agent": s["agent_id"]} for s in bare])


def update(conn: sa.Connection, node: str, **values: Any) -> bool:
    return conn.execute(agent_sessions.update().where(agent_sessions.c.node == node)
                        .values(**values)).rowcount == 1


def add_rescan(conn: sa.Connection, node: str) -> int | None:
    conn.execute(agent_sessions.update().where(agent_sessions.c.node == node)
                 .values(rescans=agent_sessions.c.rescans + 1))
    value = conn.execute(sa.select(agent_sessions.c.rescans)
                         .where(agent_sessions.c.node == node)).scalar_one_or_none()
    return int(value) if value is not None else None
