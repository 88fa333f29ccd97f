"""One-time join tokens (``service/join_tokens.py``): redeemed once, for the
node they name, before they expire; an unused one can be revoked. Run on
SQLite and PostgreSQL: the spend is one conditional UPDATE on each."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from apportion.exceptions import PermissionDenied, Unauthenticated
from apportion.service.join_tokens import JoinTokens, is_join_token
from support import Clock

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def test_a_join_token_is_redeemed_once_for_its_node(sqlite_engine: sa.Engine) -> None:
    clock = Clock(T0)
    tokens = JoinTokens(sqlite_engine, ttl_s=600.0, clock=clock)
    token = tokens.issue("gpu", "p-1", {"pool": "gpu", "zone": "b"})
    assert is_join_token(token) and token.startswith("apj_")
    with pytest.raises(PermissionDenied, match="this join token registers node p-1, not p-2"):
        tokens.redeem(token, "p-2")
    clock.now += 60
    record = tokens.redeem(token, "p-1")
    assert (record.pool, record.node, record.labels) == ("gpu", "p-1", {"pool": "gpu", "zone": "b"})
    with pytest.raises(
        Unauthenticated,
        match=r"join token already used: it registered node p-1 into pool gpu at "
        r"2023-11-14T22:14:20Z; a join token works once",
    ):
        tokens.redeem(token, "p-1")


def test_an_expired_unknown_or_revoked_token_is_refused(sqlite_engine: sa.Engine) -> None:
    clock = Clock(T0)
    tokens = JoinTokens(sqlite_engine, ttl_s=600.0, clock=clock)
    late = tokens.issue("cpu", "c-1", {})
    short = tokens.issue("cpu", "c-2", {}, ttl_s=10.0)
    revoked = tokens.issue("cpu", "c-3", {})
    clock.now += 10
    with pytest.raises(
        Unauthenticated,
        match=r"join token for node c-2 \(pool cpu\) expired at "
        r"2023-11-14T22:13:30Z",
    ):
        tokens.redeem(short, "c-2")
    assert tokens.revoke_unused("c-3") == 1
    assert tokens.revoke_unused("c-3") == 0
    with pytest.raises(Unauthenticated):
        tokens.redeem(revoked, "c-3")
    with pytest.raises(Unauthenticated, match="unknown join token"):
        tokens.redeem("apj_never-issued", "c-1")
    clock.now = T0 + 599
    assert tokens.redeem(late, "c-1").node == "c-1"


def test_agents_racing_with_one_token_register_one_node(engine: sa.Engine) -> None:
    tokens = JoinTokens(engine, clock=Clock(T0))
    token = tokens.issue("gpu", "p-1", {})

    def redeem(_: int) -> str:
        try:
            return tokens.redeem(token, "p-1").node
        except Unauthenticated as exc:
            return str(exc).split(":")[0]

    with ThreadPoolExecutor(8) as pool:
        results = sorted(pool.map(redeem, range(8)))
    assert results == ["join token already used"] * 7 + ["p-1"]


def test_nodes_joining_at_once_with_their_own_tokens_all_join(sqlite_engine: sa.Engine) -> None:
    # A pool scaled up by eight: their agents redeem side by side. On SQLite a
    # redeem that read before it wrote failed with "database is locked".
    tokens = JoinTokens(sqlite_engine, clock=Clock(T0))
    issued = [(tokens.issue("gpu", f"p-{i}", {}), f"p-{i}") for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        joined = sorted(pool.map(lambda pair: tokens.redeem(*pair).node, issued))
    assert joined == [f"p-{i}" for i in range(8)]
