"""The composition root (``service/wiring.py``): a started server wins the
lock (SQLite: one server), releases job allocations no task holds as it
becomes leader, runs its loops (a submitted job is placed without anyone
calling a cycle), and stops them all, writing what it heard last."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from apportion.core.model import Node
from apportion.service.jobs import JOB_LABEL
from apportion.service.wiring import Services
from support import wait_until


def test_a_started_server_leads_places_work_and_stops(servers: Callable[..., Services]) -> None:
    earlier = servers("earlier")  # a previous run left a job's grant without its task

    async def leave_an_orphan() -> str:
        await earlier.ledger.register_node(Node("n1", {"cpu": 4000}))
        orphan = await earlier.ledger.grant({"cpu": 3000}, owner="x", labels={JOB_LABEL: "j-0"})
        return orphan.id

    orphan = asyncio.run(leave_an_orphan())
    server = servers("now")

    async def scenario() -> None:
        await server.start()
        try:
            assert server.leadership.is_leader
            await wait_until(
                "the orphan released", lambda: server.ledger.allocated("n1") == {"cpu": 0}
            )
            stored = await server.ledger.get_allocation(orphan)
            assert (stored.active, stored.reason.value if stored.reason else None) == (
                False,
                "cancelled",
            )
            assert len(server._leading) == 2  # history and planning; no pools, no NATS
            job = await server.jobs.submit({"resources": {"cpu": "2"}}, "alice")
            await wait_until("the job placed", lambda: server.jobs.live[job.id].state == "running")
        finally:
            await server.stop()
        assert all(task.done() for task in [*server._tasks, *server._leading])
        assert not server.leadership.is_leader

    asyncio.run(scenario())
