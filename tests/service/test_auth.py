"""Tokens and roles (``service/auth.py``): a token maps to its principal, is
cached for a few seconds (a revocation through another server takes hold
here within that time, at once when its event arrives), the admin token
set at start replaces the old one, and roles say who may do what."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from apportion.exceptions import InvalidInput, PermissionDenied, TokenTooShort, Unauthenticated
from apportion.service.auth import Authenticator, Principal, Role, check_admin_token
from apportion.service.wiring import Services
from support import Clock


def test_a_token_names_its_principal_and_bad_headers_are_told_why(services: Services) -> None:
    auth = services.auth
    token, record = auth.create("alice", "user")
    assert token.startswith("apt_") and (record.name, record.role) == ("alice", "user")

    async def scenario() -> None:
        assert await auth.authenticate(f"Bearer {token}") == Principal("alice", Role.USER)
        assert await auth.authenticate(f"bearer   {token} ") == Principal("alice", Role.USER)
        with pytest.raises(Unauthenticated, match="missing Authorization header"):
            await auth.authenticate(None)
        with pytest.raises(Unauthenticated, match="Authorization must be 'Bearer <token>'"):
            await auth.authenticate(f"Basic {token}")
        with pytest.raises(Unauthenticated, match="unknown token"):
            await auth.authenticate("Bearer apt_nope")
        with pytest.raises(Unauthenticated, match="this is a one-time join token"):
            await auth.authenticate("Bearer apj_something")

    asyncio.run(scenario())
    with pytest.raises(InvalidInput, match="role: 'root' is not one of admin, user, agent"):
        auth.create("alice", "root")
    with pytest.raises(InvalidInput, match="name: give 1-253 characters"):
        auth.create("", "user")


def test_a_revocation_elsewhere_takes_hold_within_the_cache_time(
    servers: Callable[..., Services],
) -> None:
    a, b = servers("a"), servers("b")
    clock = Clock(100.0)
    here = Authenticator(a.uow.engine, clock=clock)  # as wiring builds it, on a test clock
    token, _ = b.auth.create("bob", "user")

    async def scenario() -> None:
        header = f"Bearer {token}"
        assert (await here.authenticate(header)).name == "bob"
        assert here.known(header)
        assert b.auth.revoke("bob") == 1
        clock.now += 9.9
        assert (await here.authenticate(header)).name == "bob"  # cached
        clock.now += 0.1
        with pytest.raises(Unauthenticated, match="unknown token"):
            await here.authenticate(header)
        assert not here.known(header)

    asyncio.run(scenario())


def test_the_admin_token_set_at_start_replaces_the_old_one(services: Services) -> None:
    auth = services.auth
    old, new = "old-admin-token-0123456789abcdef", "new-admin-token-0123456789abcdef"
    auth.ensure("admin", "admin", old)
    auth.ensure("admin", "admin", old)  # the same at the next start: nothing changes

    async def scenario() -> None:
        assert (await auth.authenticate(f"Bearer {old}")).role is Role.ADMIN
        auth.ensure("admin", "admin", new)
        with pytest.raises(Unauthenticated, match="unknown token"):
            await auth.authenticate(f"Bearer {old}")
        assert (await auth.authenticate(f"Bearer {new}")).role is Role.ADMIN

    asyncio.run(scenario())
    with pytest.raises(TokenTooShort, match="APPORTION_ADMIN_TOKEN: at least 24 characters"):
        check_admin_token("short")


def test_roles_say_who_may_do_what() -> None:
    admin, user = Principal("root", Role.ADMIN), Principal("alice", Role.USER)
    agent = Principal("n1", Role.AGENT)
    admin.require(Role.ADMIN)
    with pytest.raises(PermissionDenied, match=r"this needs the admin role; your token \(alice\)"):
        user.require(Role.ADMIN)
    admin.may_manage_node("n1")
    agent.may_manage_node("n1")
    with pytest.raises(PermissionDenied, match=r"token n1 \(agent\) may not change node n2"):
        agent.may_manage_node("n2")
    with pytest.raises(PermissionDenied, match="may not change node n1"):
        user.may_manage_node("n1")
