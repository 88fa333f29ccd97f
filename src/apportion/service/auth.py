"""Tokens and roles: who is calling, and may they do this.

Roles: ``admin`` may do everything; ``user`` reads, allocates and releases
its own allocations; ``agent`` registers and updates the node named like its
token. Tokens are random and stored hashed; verified ones are cached in
memory so the hot path does not query the store on every request.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import sqlalchemy as sa

from apportion.core.records import TokenRecord
from apportion.exceptions import (
    InvalidInput,
    PermissionDenied,
    TokenTooShort,
    Unauthenticated,
)
from apportion.service.join_tokens import JOIN_PREFIX
from apportion.store import tokens as token_table


class Role(StrEnum):
    ADMIN = "admin"
    USER = "user"
    AGENT = "agent"


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    role: Role

    def require(self, *roles: Role) -> None:
        if self.role not in roles:
            allowed = " or ".join(r.value for r in roles)
            raise PermissionDenied(
                f"this needs the {allowed} role; your token ({self.name}) is {self.role.value}",
                role=self.role.value,
            )

    def may_manage_node(self, node: str) -> None:
        if self.role is Role.ADMIN or (self.role is Role.AGENT and self.name == node):
            return
        raise PermissionDenied(
            f"token {self.name} ({self.role.value}) may not change node {node}; admins may, and "
            "agents may change the node named like their token",
            node=node,
        )


CACHE_S = 10.0
MIN_ADMIN_TOKEN = 24


def check_admin_token(token: str) -> None:
    """Refuse an APPORTION_ADMIN_TOKEN too short to be a credential."""
    if len(token) < MIN_ADMIN_TOKEN:
        raise TokenTooShort(
            f"APPORTION_ADMIN_TOKEN: at least {MIN_ADMIN_TOKEN} characters (this one has "
            f"{len(token)}); make one with: python3 -c 'import secrets; "
            "print(secrets.token_urlsafe(32))'", field="APPORTION_ADMIN_TOKEN")


def new_token() -> str:
    return "apt_" + secrets.token_urlsafe(32)


class Authenticator:
    """Maps bearer tokens to principals, with a small positive cache."""

    def __init__(self, engine: sa.Engine, clock: Callable[[], float] = time.monotonic) -> None:
        self._engine = engine
        self._clock = clock
        self._cache: dict[str, tuple[Principal, float, float | None]] = {}
        """token -> (principal, when cached, when it ends): kept ``CACHE_S``,
        so a token revoked through another server stops working here within
        that time (at once, when that server's event reaches this one); a
        dashboard session's token is refused from its end on, cached or not."""

    def create(self, name: str, role: str, token: str | None = None) -> tuple[str, TokenRecord]:
        """Store a new token and return it in plain text (shown once)."""
        if role not in {r.value for r in Role}:
            raise InvalidInput(f"role: {role!r} is not one of admin, user, agent", field="role")
        if not name or len(name) > 253:
            raise InvalidInput("name: give 1-253 characters", field="name")
        token = token or new_token()
        record = TokenRecord(uuid.uuid4().hex, name, role, time.time())
        with self._engine.begin() as conn:
            token_table.insert_token(conn, record, token)
        return token, record

    def ensure(self, name: str, role: str, token: str) -> None:
        """Make ``token`` the one token called ``name`` (APPORTION_ADMIN_TOKEN
        at start): a changed variable replaces the old token, not adds to it."""
        with self._engine.begin() as conn:
            record = token_table.find_token(conn, token)
            if record is not None and (record.name, record.role) == (name, role):
                # The same token as before: its dashboard sessions stay signed in.
                token_table.delete_tokens_named(conn, name, role, keep=record.id,
                                                sessions=False)
                return
            token_table.delete_tokens_named(conn, name, role)
        self.forget(name)
        self.create(name, role, token)

    async def authenticate(self, header: str | None) -> Principal:
        if not header:
            raise Unauthenticated(
                "missing Authorization header; send 'Authorization: Bearer "
                "<token>' (create one with 'apportion token create')"
            )
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("Authorization must be 'Bearer <token>'")
        token = token.strip()
        cached = self._cache.get(token)
        if cached is not None:
            if self._clock() - cached[1] < CACHE_S and (
                    cached[2] is None or time.time() < cached[2]):
                return cached[0]
            # Stale, or its session ended: looked up again below. Dropped
            # first, so that a token revoked meanwhile is no longer ``known``
            # (which lets a request past the failed-login block).
            self._cache.pop(token, None)
        if token.startswith(JOIN_PREFIX):
            raise Unauthenticated(
                "this is a one-time join token: it is good only for registering its node "
                "(POST /api/v1/agents/register), which answers the node's agent token")
        record = await asyncio.to_thread(self._lookup, token)
        if record is None:
            raise Unauthenticated("unknown token")
        principal = Principal(record.name, Role(record.role))
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[token] = (principal, self._clock(), record.expires_at)
        return principal

    def known(self, header: str | None) -> bool:
        """Whether the header carries a token this server has verified before
        and not seen revoked (no lookup; it is verified again when used)."""
        token = (header or "").partition(" ")[2].strip()
        return token in self._cache

    def forget(self, name: str) -> None:
        """Drop cached tokens named ``name`` (revoked, here or elsewhere)."""
        for token, (principal, _, _) in list(self._cache.items()):
            if principal.name == name:
                self._cache.pop(token, None)

    def revoke(self, name: str) -> int:
        """Delete every token named ``name``; returns how many there were."""
        with self._engine.begin() as conn:
            count = token_table.delete_tokens_named(conn, name, None)
        self.forget(name)
        return count

    def revoke_node(self, node: str) -> int:
        """Delete the agent tokens of ``node`` (a node that is gone for good)
        and forget them here; returns how many were deleted."""
        with self._engine.begin() as conn:
            count = token_table.delete_tokens_named(conn, node, Role.AGENT.value)
        self.forget(node)
        return count

    def _lookup(self, token: str) -> TokenRecord | None:
        with self._engine.connect() as conn:
            return token_table.find_token(conn, token)
