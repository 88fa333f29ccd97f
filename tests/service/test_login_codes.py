"""Dashboard sessions (``service/tokens_service.py``, ``LoginCodes``): a
session acts as the token that minted its code, ends on time even while a
server has it cached, goes with a revocation of its name, and stays signed
in across a restart with the same APPORTION_ADMIN_TOKEN (not a changed one)."""

from __future__ import annotations

import asyncio

import pytest

from apportion.exceptions import Unauthenticated
from apportion.service.auth import Principal, Role
from apportion.service.tokens_service import LoginCodes
from apportion.service.wiring import Services
from e2e.cluster import wait_for

ADMIN = "admin-token-for-the-sessions-test-0123"


async def _session(codes: LoginCodes, who: Principal) -> str:
    code, _ = await codes.issue(who)
    token, record = await codes.redeem(code)
    assert (record.name, record.role) == (who.name, who.role.value)
    return token


def test_a_session_ends_on_time_even_while_cached(services: Services) -> None:
    auth = services.auth
    codes = LoginCodes(services.uow, session_s=0.5)
    token = asyncio.run(_session(codes, Principal("alice", Role.USER)))
    assert asyncio.run(auth.authenticate(f"Bearer {token}")) == Principal("alice", Role.USER)
    assert auth.known(f"Bearer {token}")  # cached for up to 10 s

    def refused() -> str | None:
        try:
            asyncio.run(auth.authenticate(f"Bearer {token}"))
        except Unauthenticated as exc:
            return str(exc)
        return None

    assert wait_for("the session to end", refused, timeout=30) == "unknown token"


def test_revoking_a_name_ends_its_sessions(services: Services) -> None:
    async def scenario() -> None:
        services.auth.create("bob", "user")
        token = await _session(LoginCodes(services.uow), Principal("bob", Role.USER))
        await services.auth.authenticate(f"Bearer {token}")
        assert await services.tokens.revoke("bob") == 2  # his token and his session
        with pytest.raises(Unauthenticated, match="unknown token"):
            await services.auth.authenticate(f"Bearer {token}")

    asyncio.run(scenario())


def test_sessions_outlive_a_restart_with_the_same_admin_token_only(services: Services) -> None:
    auth = services.auth
    auth.ensure("admin", "admin", ADMIN)
    token = asyncio.run(_session(LoginCodes(services.uow), Principal("admin", Role.ADMIN)))

    auth.ensure("admin", "admin", ADMIN)  # a restart: the same token
    auth.forget("admin")
    assert asyncio.run(auth.authenticate(f"Bearer {token}")) == Principal("admin", Role.ADMIN)

    auth.ensure("admin", "admin", ADMIN + "-changed")  # a new token: the old one's sessions go
    with pytest.raises(Unauthenticated, match="unknown token"):
        asyncio.run(auth.authenticate(f"Bearer {token}"))
