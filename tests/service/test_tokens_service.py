"""Revoking tokens (``service/tokens_service.py``): the rows go, the event
tells the other servers, and a server that reads it forgets its cache."""

from __future__ import annotations

import asyncio

import pytest

from apportion.exceptions import Unauthenticated
from apportion.service.wiring import Services
from apportion.store.event_log import events_after


def _revocations(services: Services) -> list[tuple[str, dict[str, int]]]:
    events = services.uow.read_now(lambda conn: events_after(conn, 0))
    return [(e.subject, e.data) for e in events if e.kind == "token.revoked"]


def test_revoke_deletes_every_token_of_the_name_and_says_so_once(services: Services) -> None:
    async def scenario() -> None:
        auth, tokens = services.auth, services.tokens
        first, _ = auth.create("ci", "user")
        auth.create("ci", "user")
        auth.create("ops", "admin")
        await auth.authenticate(f"Bearer {first}")
        assert auth.known(f"Bearer {first}")
        assert sorted((t.name, t.role) for t in await tokens.list()) == [
            ("ci", "user"), ("ci", "user"), ("ops", "admin")]

        assert await tokens.revoke("ci") == 2
        assert not auth.known(f"Bearer {first}")
        with pytest.raises(Unauthenticated, match="unknown token"):
            await auth.authenticate(f"Bearer {first}")
        assert [t.name for t in await tokens.list()] == ["ops"]
        assert await tokens.revoke("nobody") == 0  # nothing to tell anyone
        assert _revocations(services) == [("ci", {"count": 2})]

    asyncio.run(scenario())


def test_a_revocation_read_from_another_server_drops_the_cached_token(
        services: Services) -> None:
    async def scenario() -> None:
        auth = services.auth
        token, _ = auth.create("alice", "user")
        await auth.authenticate(f"Bearer {token}")
        await services.tokens.follow([(7, "node.updated", "alice", "other"),
                                      (8, "token.revoked", "bob", "other")])
        assert auth.known(f"Bearer {token}")  # neither event is about alice's token
        await services.tokens.follow([(9, "token.revoked", "alice", "other")])
        assert not auth.known(f"Bearer {token}")

    asyncio.run(scenario())
