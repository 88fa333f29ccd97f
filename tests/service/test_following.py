"""Following the other servers (``service/following.py``): one server's
changes reach another's caches (nodes and allocations, jobs, agents'
sessions) through the events they were written with; on PostgreSQL a
commit's NOTIFY wakes the follower at once, long before its next poll."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from apportion.core.model import Node
from apportion.service.following import EventFollower
from apportion.service.wiring import Services
from support import wait_until


def test_another_servers_changes_reach_this_servers_caches(
    servers: Callable[..., Services], store_url: str
) -> None:
    a, b = servers("a", store_url), servers("b", store_url)

    async def scenario() -> None:
        await b.leadership.campaign_round()  # b places; a only follows
        try:
            await b.agents.register(Node("n1", {"cpu": 4000}), {"id": "agent-1"})
            await b.ledger.grant({"cpu": 1000}, node="n1", owner="bob")
            job = await b.jobs.submit({"resources": {"cpu": "2"}}, "alice")
            await b.jobs.run_cycle()
            assert await a.follower.sync() > 0
            assert a.ledger.allocated("n1") == {"cpu": 3000}
            assert a.agents.has_agent("n1")
            assert a.jobs.live[job.id].state == "running"
            assert await a.follower.sync() == 0  # nothing new
            # And back: a cancels, b follows.
            await a.jobs.cancel(job.id)
            assert await b.follower.sync() > 0
            assert job.id not in b.jobs.live
            assert b.ledger.allocated("n1") == {"cpu": 1000}
            # Its own events are not read again as others'.
            assert await a.follower.sync() == 0
        finally:
            await b.leadership.stop()

    asyncio.run(scenario())


def test_a_notify_wakes_the_follower_before_its_poll(
    servers: Callable[..., Services], pg_url: str
) -> None:
    a, b = servers("a", pg_url), servers("b", pg_url)
    # Polls every ten minutes: only a NOTIFY can bring b's job to a in time.
    follower = EventFollower(a.uow, a.ledger, [a.jobs.follow], interval_s=600.0)

    async def scenario() -> None:
        running = asyncio.ensure_future(follower.run_forever())
        try:
            # Listening starts with one sync (what was missed before listening).
            await b.ledger.register_node(Node("n0", {"cpu": 1000}))
            await wait_until("n0 at a", lambda: "n0" in a.ledger.nodes)
            await b.ledger.register_node(Node("n1", {"cpu": 4000}))
            job = await b.jobs.submit({"resources": {"cpu": "2"}}, "alice")
            await wait_until(
                "b's job at a", lambda: job.id in a.jobs.live and "n1" in a.ledger.nodes
            )
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)

    asyncio.run(scenario())
