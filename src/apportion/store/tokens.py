"""API tokens, stored as SHA-256 hashes: the plain token is shown once.

A token with ``expires_at`` is a dashboard session (made from a one-time
sign-in code); it is refused once that time has passed, and forgotten when
the next code is redeemed."""

from __future__ import annotations

import hashlib
import time

import sqlalchemy as sa

from apportion.core.records import TokenRecord
from apportion.store.schema import tokens


def hash_token(token: str) -> str:
    # Tokens are 32 random bytes, so a fast hash is enough: there is nothing
    # to brute-force, unlike a password.
    return hashlib.sha256(token.encode()).hexdigest()


def insert_token(conn: sa.Connection, record: TokenRecord, token: str) -> None:
    conn.execute(
        tokens.insert().values(
            id=record.id,
            name=record.name,
            role=record.role,
            token_hash=hash_token(token),
            created_at=record.created_at,
            expires_at=record.expires_at,
        )
    )


_COLUMNS = (tokens.c.id, tokens.c.name, tokens.c.role, tokens.c.created_at, tokens.c.expires_at)


def _unexpired(now: float | None) -> sa.ColumnElement[bool]:
    return sa.or_(
        tokens.c.expires_at.is_(None), tokens.c.expires_at > (time.time() if now is None else now)
    )


def find_token(conn: sa.Connection, token: str, now: float | None = None) -> TokenRecord | None:
    """The token's record, unless it is unknown or a session that has ended."""
    row = conn.execute(
        sa.select(*_COLUMNS).where(tokens.c.token_hash == hash_token(token), _unexpired(now))
    ).first()
    return TokenRecord(row.id, row.name, row.role, row.created_at, row.expires_at) if row else None


def list_tokens(conn: sa.Connection, now: float | None = None) -> list[TokenRecord]:
    rows = conn.execute(sa.select(*_COLUMNS).where(_unexpired(now)).order_by(tokens.c.created_at))
    return [TokenRecord(r.id, r.name, r.role, r.created_at, r.expires_at) for r in rows]


def delete_token(conn: sa.Connection, token_id: str) -> bool:
    return conn.execute(tokens.delete().where(tokens.c.id == token_id)).rowcount == 1


def delete_tokens_named(
    conn: sa.Connection,
    name: str,
    role: str | None,
    keep: str | None = None,
    *,
    sessions: bool = True,
) -> int:
    """Delete the tokens called ``name`` (of ``role``, if given; all but
    ``keep``; dashboard sessions too unless ``sessions`` is False)."""
    query = tokens.delete().where(tokens.c.name == name)
    if role is not None:
        query = query.where(tokens.c.role == role)
    if keep is not None:
        query = query.where(tokens.c.id != keep)
    if not sessions:
        query = query.where(tokens.c.expires_at.is_(None))
    return int(conn.execute(query).rowcount)


def purge_ended_sessions(conn: sa.Connection, now: float) -> int:
    """Forget dashboard sessions that have ended."""
    return int(conn.execute(tokens.delete().where(tokens.c.expires_at <= now)).rowcount)
