"""``JobsService.queue_usage`` counts what ``ClusterState.usage`` counts,
without building the state (it runs on the event loop every few seconds)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from apportion.core.model import Node
from apportion.service.wiring import Services


@pytest.fixture
def settings_given() -> dict[str, Any]:
    return {"strategy": "priority"}


def test_queue_usage_matches_the_cluster_state(services: Services) -> None:
    async def scenario() -> None:
        ctx = services
        try:
            await ctx.leadership.campaign_round()
            assert ctx.leadership.is_leader
            for i in range(4):
                await ctx.ledger.register_node(Node(f"n{i}", {"cpu": 8000, "memory": 1 << 34}))
            await ctx.jobs.put_queue("team-a", {"cpu": "20"}, 1.0, None, None)
            await ctx.jobs.put_queue("team-b", {}, 1.0, None, None)
            await ctx.jobs.put_queue("idle", {}, 1.0, None, None)
            await ctx.jobs.submit({"resources": {"cpu": "2", "memory": "1Gi"},
                                   "queue": "team-a"}, "alice")
            await ctx.jobs.submit({"resources": {"cpu": "1"}, "count": 3,
                                   "queue": "team-b"}, "bob")
            await ctx.jobs.submit({"tasks": [{"resources": {"cpu": "1"}, "count": 2},
                                             {"resources": {"cpu": "500m", "memory": "2Gi"}}],
                                   "gang": True, "queue": "team-a"}, "alice")
            await ctx.jobs.submit({"resources": {"cpu": "1"}}, "carol")  # queue default
            await ctx.ledger.grant({"cpu": 1500}, owner="plain")  # no job: no queue
            for _ in range(5):
                await ctx.jobs.run_cycle()
            state = ctx.jobs.scheduler.cluster_state()
            expected = {name: dict(state.usage(name)) for name in ctx.jobs.queues}
            assert ctx.jobs.queue_usage() == expected
            assert expected["team-a"]["cpu"] > 0 and expected["team-b"]["cpu"] == 3000
            assert expected["idle"] == {}
        finally:
            await ctx.leadership.stop()

    asyncio.run(scenario())
