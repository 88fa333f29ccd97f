"""One-time join tokens, stored as SHA-256 hashes (the plain token goes to the
provider once). A token is spent by one conditional UPDATE, so two agents
presenting it at once cannot both join, with one server or several."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from apportion.store.schema import join_tokens
from apportion.store.tokens import hash_token


@dataclass(frozen=True, slots=True)
class JoinTokenRecord:
    id: str
    pool: str
    node: str
    """The only node name the token may register."""
    labels: dict[str, str]
    created_at: float
    expires_at: float
    used_at: float | None = None


def insert(conn: sa.Connection, record: JoinTokenRecord, token: str) -> None:
    conn.execute(join_tokens.insert().values(
        id=record.id, token_hash=hash_token(token), pool=record.pool, node=record.node,
        labels=dict(record.labels), created_at=record.created_at,
        expires_at=record.expires_at, used_at=record.used_at))


def _record(row: Any) -> JoinTokenRecord:
    return JoinTokenRecord(row.id, row.pool, row.node, dict(row.labels or {}), row.created_at,
                           row.expires_at, row.used_at)


_COLUMNS = (join_tokens.c.id, join_tokens.c.pool, join_tokens.c.node, join_tokens.c.labels,
            join_tokens.c.created_at, join_tokens.c.expires_at, join_tokens.c.used_at)


def find(conn: sa.Connection, token: str) -> JoinTokenRecord | None:
    row = conn.execute(sa.select(*_COLUMNS).where(
        join_tokens.c.token_hash == hash_token(token))).first()
    return _record(row) if row else None


def spend(conn: sa.Connection, token: str, node: str, now: float) -> JoinTokenRecord | None:
    """Mark the token used, if it is unused, unexpired and for ``node``: the
    record when this call spent it, else None (``find`` then says why).

    The UPDATE is meant to be its transaction's first statement: on SQLite a
    transaction that reads first and then writes fails at once ("database
    is locked", no busy wait) when another writer committed in between, as
    concurrent joins do; one that writes first waits its turn."""
    result = conn.execute(join_tokens.update().where(
        join_tokens.c.token_hash == hash_token(token), join_tokens.c.node == node,
        join_tokens.c.used_at.is_(None), join_tokens.c.expires_at > now).values(used_at=now))
    return find(conn, token) if result.rowcount == 1 else None


def revoke_unused(conn: sa.Connection, node: str, now: float) -> int:
    """Expire the unused tokens of ``node`` now (its machine was terminated
    before it joined)."""
    result = conn.execute(join_tokens.update().where(
        join_tokens.c.node == node, join_tokens.c.used_at.is_(None),
        join_tokens.c.expires_at > now).values(expires_at=now))
    return int(result.rowcount)


def purge(conn: sa.Connection, before: float) -> int:
    """Forget tokens that expired (or were used) before ``before``."""
    result = conn.execute(join_tokens.delete().where(sa.or_(
        join_tokens.c.expires_at < before, join_tokens.c.used_at < before)))
    return int(result.rowcount)
