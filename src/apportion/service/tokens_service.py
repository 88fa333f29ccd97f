"""Revoking API tokens on every server; one-time sign-in codes for the dashboard.

The token rows are the truth; each server caches verified tokens for a few
seconds (``service/auth.py``). A revocation deletes the rows and writes a
``token.revoked`` event in the same transaction's wake; the other servers
drop their cached copies as soon as they read it (``follow``), and in any
case when the cache entry expires.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa

from apportion.core.records import TokenRecord
from apportion.exceptions import Unauthenticated
from apportion.service.auth import Authenticator, Principal, Role, new_token
from apportion.service.unit_of_work import UnitOfWork
from apportion.store import login_codes as code_table
from apportion.store import tokens as token_table
from apportion.store.login_codes import LoginCodeRecord

CODE_KEEP_S = 86400.0
"""Used and expired codes are remembered a day, to say 'already used'."""


class TokensService:
    def __init__(self, auth: Authenticator, uow: UnitOfWork) -> None:
        self.auth = auth
        self.uow = uow
        self.codes = LoginCodes(uow)

    async def list(self) -> list[TokenRecord]:
        """Every token's name, role and age (never the token)."""
        records: list[TokenRecord] = await self.uow.read(token_table.list_tokens)
        return records

    async def revoke(self, name: str) -> int:
        """Delete every token called ``name``; returns how many there were."""
        count = await asyncio.to_thread(self.auth.revoke, name)
        if count:
            def write(conn: sa.Connection) -> None:
                self.uow.event(conn, "token.revoked", name, {"count": count})

            await self.uow.write(write)
        return count

    async def issue_code(self, caller: Principal) -> tuple[str, LoginCodeRecord]:
        """A one-time code that signs the dashboard in as ``caller``."""
        return await self.codes.issue(caller)

    async def redeem_code(self, code: str) -> tuple[str, TokenRecord]:
        """A dashboard session token for ``code``, which is then spent."""
        return await self.codes.redeem(code)

    async def follow(self, events: Sequence[tuple[int, str, str, str]]) -> None:
        for _, kind, subject, _ in events:
            if kind == "token.revoked":
                self.auth.forget(subject)


CODE_TTL_S = 60.0
"""A sign-in code works once, within this long of being made: it is shown
in a terminal and carried in a URL, both of which others may see later."""
SESSION_S = 12 * 3600.0
"""How long a dashboard session opened with a code stays signed in."""
CODE_PREFIX = "apc_"


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class LoginCodes:
    """One-time sign-in codes: ``apportion dashboard`` asks for one with its
    token, prints a URL that carries it in the fragment (never sent to a
    server or its logs), and the page exchanges it once for a session token
    of the same name and role that ends after ``SESSION_S``. Code and session
    live in the database, so any server redeems a code any other made."""

    def __init__(self, uow: UnitOfWork, *, code_ttl_s: float = CODE_TTL_S,
                 session_s: float = SESSION_S) -> None:
        self.uow = uow
        self.code_ttl_s = code_ttl_s
        self.session_s = session_s

    async def issue(self, caller: Principal) -> tuple[str, LoginCodeRecord]:
        """A new code that opens a session as ``caller`` (shown once)."""
        caller.require(Role.ADMIN, Role.USER)
        now = self.uow.clock()
        code = CODE_PREFIX + secrets.token_urlsafe(24)
        record = LoginCodeRecord(uuid.uuid4().hex, caller.name, caller.role.value, now,
                                 now + self.code_ttl_s)

        def write(conn: sa.Connection) -> None:
            code_table.insert(conn, record, code)
            code_table.purge(conn, now - CODE_KEEP_S)

        await self.uow.write(write)
        return code, record

    async def redeem(self, code: str) -> tuple[str, TokenRecord]:
        """Spend ``code`` for a new session token; 401 with what happened
        when it is unknown, used or expired."""
        now = self.uow.clock()
        token = new_token()

        def write(conn: sa.Connection) -> TokenRecord:
            found = code_table.find(conn, code)
            if found is None:
                raise Unauthenticated("unknown sign-in code; run 'apportion dashboard' for a "
                                      "new one")
            if found.used_at is not None:
                raise Unauthenticated(
                    f"this sign-in code was already used (at {_when(found.used_at)}); a code "
                    "works once: run 'apportion dashboard' for a new one")
            if found.expires_at <= now or not code_table.spend(conn, found.id, now):
                raise Unauthenticated(
                    f"this sign-in code expired at {_when(found.expires_at)} (a code works "
                    f"for {self.code_ttl_s:g} s); run 'apportion dashboard' for a new one")
            session = TokenRecord(uuid.uuid4().hex, found.name, found.role, now,
                                  now + self.session_s)
            token_table.insert_token(conn, session, token)
            token_table.purge_ended_sessions(conn, now)
            return session

        record: TokenRecord = await self.uow.write(write)
        return token, record
