"""One-time join tokens: how a node a provider made for a pool joins.

The scaling service issues one token per new node, bound to that node's
name and pool, valid for ``ttl_s``; the provider hands it to the machine
(environment, boot script, Kubernetes Secret). The agent presents it once,
to ``POST /api/v1/agents/register``: the server spends it (one conditional
UPDATE, so two agents cannot both join with it), registers the node with the
pool's labels, and answers a fresh agent token for that node, which the
agent keeps and uses from then on. The join token is then worthless, which
matters because it stays readable on the machine (instance metadata, the
container's environment) after it was used.

A spent, expired or unknown join token is answered 401 with what happened;
a token presented for another node name, 403.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

import sqlalchemy as sa

from apportion.exceptions import PermissionDenied, Unauthenticated
from apportion.store import join_tokens as table
from apportion.store.join_tokens import JoinTokenRecord

JOIN_PREFIX = "apj_"
"""Join tokens start with this, API tokens with ``apt_``: the server knows
which kind it holds without a lookup."""
DEFAULT_TTL_S = 3600.0
KEEP_S = 7 * 86400.0
"""Spent and expired tokens are remembered this long, to answer a reuse clearly."""


def is_join_token(token: str) -> bool:
    return token.startswith(JOIN_PREFIX)


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class JoinTokens:
    """Issues and redeems join tokens over the store."""

    def __init__(self, engine: sa.Engine, *, ttl_s: float = DEFAULT_TTL_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.ttl_s = ttl_s
        self.clock = clock

    def issue(self, pool: str, node: str, labels: Mapping[str, str],
              ttl_s: float | None = None) -> str:
        """A new token that registers ``node`` into ``pool`` once (shown once)."""
        now = self.clock()
        token = JOIN_PREFIX + secrets.token_urlsafe(32)
        record = JoinTokenRecord(uuid.uuid4().hex, pool, node, dict(labels), now,
                                 now + (self.ttl_s if ttl_s is None else ttl_s))
        with self.engine.begin() as conn:
            table.insert(conn, record, token)
            table.purge(conn, now - KEEP_S)
        return token

    def redeem(self, token: str, node: str) -> JoinTokenRecord:
        """Spend ``token`` for registering ``node``; the record says the pool
        and labels the node joins with. Raises with the reason otherwise."""
        now = self.clock()
        with self.engine.begin() as conn:
            spent = table.spend(conn, token, node, now)
            if spent is not None:
                return spent
            record = table.find(conn, token)
            if record is None:
                raise Unauthenticated(
                    "unknown join token (never issued, or forgotten a week after it expired)")
            if record.used_at is not None:
                raise Unauthenticated(
                    f"join token already used: it registered node {record.node} into pool "
                    f"{record.pool} at {_when(record.used_at)}; a join token works once. "
                    "A node that lost its agent token is replaced by the pool, not rejoined",
                    node=record.node, pool=record.pool)
            if record.expires_at <= now:
                raise Unauthenticated(
                    f"join token for node {record.node} (pool {record.pool}) expired at "
                    f"{_when(record.expires_at)}", node=record.node, pool=record.pool)
            if node != record.node:
                raise PermissionDenied(
                    f"this join token registers node {record.node}, not {node}",
                    node=node)
            # Unused, unexpired and for this node as read now, yet not spent:
            # another agent spent it between the UPDATE and this read.
            raise Unauthenticated(
                f"join token already used: another agent registered node {record.node} "
                "with it just now", node=record.node)

    def revoke_unused(self, node: str) -> int:
        """A machine terminated before it joined: its token must not work later."""
        with self.engine.begin() as conn:
            return table.revoke_unused(conn, node, self.clock())
