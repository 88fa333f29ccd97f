"""Running a transition (``service/jobs/writer.py``): its outcome is in this
server's cache as soon as it committed, a job this server had not cached is
read from the store (an agent may report to any server), and a caller
cancelled meanwhile does not leave the cache behind the store."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial

from apportion.core.model import Node
from apportion.service.jobs import TaskReport
from apportion.service.jobs import transitions as t
from apportion.service.wiring import Services
from support import wait_until

AGENT = {"id": "agent-1", "heartbeat_s": 5.0}


def test_a_report_to_a_server_that_had_not_cached_the_job_reads_it(
    servers: Callable[..., Services],
) -> None:
    leader, other = servers("leader"), servers("other")

    async def scenario() -> None:
        await leader.leadership.campaign_round()
        try:
            await leader.agents.register(Node("n1", {"cpu": 4000}), AGENT)
            job = await leader.jobs.submit(
                {"command": ["sleep", "1d"], "resources": {"cpu": "1"}}, "alice"
            )
            await leader.jobs.run_cycle()
            _, [task] = await leader.jobs.get(job.id)
            other.agents.load()  # the session as stored; the job it has not followed
            assert job.id not in other.jobs.live
            answer = await other.agents.report("n1", task.id, TaskReport("running"))
            assert answer == {"known": True, "active": True, "state": "running"}
            live = other.jobs.live[job.id]
            assert (live.state, [t.state for t in live.active()]) == ("running", ["running"])
            [assignment] = await other.jobs.assignments("n1")
            assert (assignment.id, assignment.resources_base) == (task.id, {"cpu": 1000})
        finally:
            await leader.leadership.stop()

    asyncio.run(scenario())


def test_a_cancelled_caller_does_not_leave_the_cache_behind_the_store(
    services: Services,
) -> None:
    async def scenario() -> None:
        await services.ledger.register_node(Node("n1", {"cpu": 4000}))
        job = await services.jobs.submit({"resources": {"cpu": "1"}, "count": 3}, "alice")
        await services.leadership.campaign_round()
        await services.jobs.run_cycle()
        await services.leadership.stop()
        caller = asyncio.ensure_future(services.jobs.writer.run(partial(t.cancel, job_id=job.id)))
        await asyncio.sleep(0)  # the caller starts, and queues its unit of work
        caller.cancel()
        # The shielded write goes on: its outcome reaches the cache.
        await wait_until("the cancel in the cache", lambda: job.id not in services.jobs.live)
        row, tasks = await services.jobs.get(job.id)
        assert row.state == "cancelled"
        assert [task.state for task in tasks] == ["cancelled"] * 3
        assert job.id not in services.jobs.live
        assert services.ledger.allocated("n1") == {"cpu": 0}
        assert caller.cancelled()

    asyncio.run(scenario())
