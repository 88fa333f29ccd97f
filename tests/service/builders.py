"""What the service tests share besides fixtures: running a scenario as the
leader, an agent's settings, the events a store holds.

Imported as ``service.builders`` (``tests`` is on the path, as for
``server.helpers``); the fixtures that build services and engines are in
``conftest.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import sqlalchemy as sa

from apportion.service.wiring import Services
from apportion.store.schema import events

AGENT: dict[str, Any] = {"id": "agent-1", "heartbeat_s": 5.0}
"""What an agent tells the server of itself when it registers its node."""


def as_leader(s: Services, scenario: Callable[[], Awaitable[None]]) -> None:
    """Run ``scenario`` with ``s`` the leader (won at once: nobody else
    campaigns), and step down after it."""

    async def run() -> None:
        await s.leadership.campaign_round()
        assert s.leadership.is_leader
        try:
            await scenario()
        finally:
            await s.leadership.stop()

    asyncio.run(run())


def stored_events(s: Services) -> list[sa.Row[Any]]:
    """Every event in ``s``'s store, oldest first: ``kind``, ``subject``, ``data``."""
    with s.uow.engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(events.c.kind, events.c.subject, events.c.data).order_by(events.c.id)
            )
        )
