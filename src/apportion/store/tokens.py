"""API tokens, stored as SHA-256 hashes: the plain token is shown once."""

from __future__ import annotations

import hashlib

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
        )
    )


def find_token(conn: sa.Connection, token: str) -> TokenRecord | None:
    row = conn.execute(
        sa.select(tokens.c.id, tokens.c.name, tokens.c.role, tokens.c.created_at).where(
            tokens.c.token_hash == hash_token(token)
        )
    ).first()
    return TokenRecord(row.id, row.name, row.role, row.created_at) if row else None


def list_tokens(conn: sa.Connection) -> list[TokenRecord]:
    rows = conn.execute(
        sa.select(tokens.c.id, tokens.c.name, tokens.c.role, tokens.c.created_at).order_by(
            tokens.c.created_at
        )
    )
    return [TokenRecord(r.id, r.name, r.role, r.created_at) for r in rows]


def delete_token(conn: sa.Connection, token_id: str) -> bool:
    return conn.execute(tokens.delete().where(tokens.c.id == token_id)).rowcount == 1


def delete_tokens_named(conn: sa.Connection, name: str, role: str | None,
                        keep: str | None = None) -> int:
    """Delete the tokens called ``name`` (of ``role``, if given; all but ``keep``)."""
    query = tokens.delete().where(tokens.c.name == name)
    if role is not None:
        query = query.where(tokens.c.role == role)
    if keep is not None:
        query = query.where(tokens.c.id != keep)
    return int(conn.execute(query).rowcount)
