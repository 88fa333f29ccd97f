"""Revoking API tokens on every server.

The token rows are the truth; each server caches verified tokens for a few
seconds (``service/auth.py``). A revocation deletes the rows and writes a
``token.revoked`` event in the same transaction's wake; the other servers
drop their cached copies as soon as they read it (``follow``), and in any
case when the cache entry expires.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import sqlalchemy as sa

from apportion.core.records import TokenRecord
from apportion.service.auth import Authenticator
from apportion.service.unit_of_work import UnitOfWork
from apportion.store import tokens as token_table


class TokensService:
    def __init__(self, auth: Authenticator, uow: UnitOfWork) -> None:
        self.auth = auth
        self.uow = uow

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

    async def follow(self, events: Sequence[tuple[int, str, str, str]]) -> None:
        for _, kind, subject, _ in events:
            if kind == "token.revoked":
                self.auth.forget(subject)
