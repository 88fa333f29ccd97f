"""One-time sign-in codes for the dashboard, stored as SHA-256 hashes. A code
is spent by one conditional UPDATE, so two pages presenting it at once
cannot both sign in, with one server or several on one database."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from apportion.store.schema import login_codes
from apportion.store.tokens import hash_token


@dataclass(frozen=True, slots=True)
class LoginCodeRecord:
    id: str
    name: str
    """Whose token minted it: the session it opens acts as them."""
    role: str
    created_at: float
    expires_at: float
    used_at: float | None = None


def insert(conn: sa.Connection, record: LoginCodeRecord, code: str) -> None:
    conn.execute(
        login_codes.insert().values(
            id=record.id,
            code_hash=hash_token(code),
            name=record.name,
            role=record.role,
            created_at=record.created_at,
            expires_at=record.expires_at,
            used_at=record.used_at,
        )
    )


def find(conn: sa.Connection, code: str) -> LoginCodeRecord | None:
    c = login_codes.c
    row = conn.execute(
        sa.select(c.id, c.name, c.role, c.created_at, c.expires_at, c.used_at).where(
            c.code_hash == hash_token(code)
        )
    ).first()
    return (
        LoginCodeRecord(row.id, row.name, row.role, row.created_at, row.expires_at, row.used_at)
        if row
        else None
    )


def spend(conn: sa.Connection, code_id: str, now: float) -> bool:
    """Mark the code used if it is still unused and unexpired: True when this
    call spent it."""
    c = login_codes.c
    result = conn.execute(
        login_codes.update()
        .where(c.id == code_id, c.used_at.is_(None), c.expires_at > now)
        .values(used_at=now)
    )
    return result.rowcount == 1


def purge(conn: sa.Connection, before: float) -> int:
    """Forget codes that expired before ``before``."""
    return int(conn.execute(login_codes.delete().where(login_codes.c.expires_at < before)).rowcount)
