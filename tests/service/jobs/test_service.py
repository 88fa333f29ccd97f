"""Jobs and queues as users and agents see them (``service/jobs/service.py``):
a submission is checked before it is stored (and may count on a pool's nodes
to come), queues are validated and followed by other servers, reads page
through a job's tasks, and job allocations no task holds are released."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from apportion.core.model import Node, ReleaseReason
from apportion.core.scheduling import SchedulerConfig
from apportion.exceptions import InvalidInput, JobRejected, NotFound
from apportion.service.jobs import JOB_LABEL, JobsService
from apportion.service.jobs.model import job_of
from apportion.service.wiring import Services
from service.builders import as_leader


def test_a_submission_is_checked_before_it_is_stored(services: Services) -> None:
    jobs = services.jobs

    async def scenario() -> None:
        await services.ledger.register_node(Node("n1", {"cpu": 4000}))
        with pytest.raises(
            JobRejected, match=r"no node can ever hold this task: .*cpu: node capacity 4 < 8"
        ):
            await jobs.submit({"resources": {"cpu": "8"}}, "alice")
        with pytest.raises(JobRejected, match=r"resources\.gpu: no node has gpu"):
            await jobs.submit({"resources": {"gpu": "1"}}, "alice")
        with pytest.raises(InvalidInput, match=r"restart\.policy: use never or on-failure"):
            await jobs.submit({"resources": {"cpu": "1"}, "restart": {"policy": "always"}}, "a")
        assert await jobs.list_jobs(states=None, queue=None, owner=None, limit=10, offset=0) == []
        row = await jobs.submit({"resources": {"cpu": "1"}}, "alice")
        assert (row.state, row.queue, row.owner) == ("pending", "default", "alice")
        assert jobs.live[row.id].state == "pending"
        # A command with no agent joined yet waits (checked without the agent
        # label), and the job kept is the one its stored row makes.
        row = await jobs.submit({"resources": {"cpu": "1"}, "command": ["true"],
                                 "constraints": ["!spot"]}, "alice")
        assert jobs.live[row.id].job == job_of(row)
        assert jobs.live[row.id].job.constraints.describe() == "!spot,apportion.io/agent=true"

    asyncio.run(scenario())


def test_a_job_only_a_pools_node_could_hold_waits_for_it(services: Services) -> None:
    # As wiring builds it, with the scaling service's nodes to come.
    pool_node = Node("pool-gpu-template", {"cpu": 8000, "gpu": 4})
    jobs = JobsService(
        services.uow,
        services.ledger,
        SchedulerConfig(),
        epoch=lambda: services.leadership.epoch,
        potential_nodes=lambda: [pool_node],
    )
    jobs.load()

    async def scenario() -> None:
        await services.ledger.register_node(Node("n1", {"cpu": 4000}))
        row = await jobs.submit({"resources": {"gpu": "2"}}, "alice")
        result = await jobs.run_cycle()
        assert result.placements == ()  # nothing is ever placed on a node to come
        assert jobs.live[row.id].state == "pending"

    as_leader(services, scenario)


def test_queues_are_validated_followed_by_other_servers_and_kept_over_a_restart(
    servers: Callable[..., Services],
) -> None:
    a, b = servers("a"), servers("b")

    async def scenario() -> None:
        with pytest.raises(InvalidInput, match="weight: must be greater than 0"):
            await a.jobs.put_queue("q", {}, 0.0, None, None)
        with pytest.raises(InvalidInput, match="min_priority: must not exceed max_priority"):
            await a.jobs.put_queue("q", {}, 1.0, 10, 5)
        first = await a.jobs.put_queue("team-a", {"cpu": "4"}, 2.0, None, 50)
        assert (first.quota, first.weight, first.max_priority) == ({"cpu": 4000}, 2.0, 50)
        again = await a.jobs.put_queue("team-a", {"cpu": "8"}, 1.0, None, None)
        assert again.created_at == first.created_at
        assert "team-a" not in b.jobs.queues
        await b.follower.sync()
        assert sorted(b.jobs.queues) == ["default", "team-a"]
        # Stored in base units, and read back as such (not as 8000 cores).
        assert b.jobs.queues["team-a"].quota == {"cpu": 8000}
        restarted = servers("a-again")
        assert restarted.jobs.queues["team-a"].quota == {"cpu": 8000}

    asyncio.run(scenario())


def test_a_jobs_tasks_are_read_a_page_at_a_time(services: Services) -> None:
    jobs = services.jobs

    async def scenario() -> None:
        await services.ledger.register_node(Node("n1", {"cpu": 8000}))
        job = await jobs.submit({"resources": {"cpu": "1"}, "count": 5}, "alice")
        await jobs.run_cycle()
        row, page, total = await jobs.get_page(job.id, limit=2, offset=1)
        assert (row.state, [t.index for t in page], total) == ("running", [1, 2], 5)
        with pytest.raises(NotFound, match="job j-nope not found"):
            await jobs.get("j-nope")
        with pytest.raises(InvalidInput, match=f"job {job.id} is not waiting"):
            jobs.explain(job.id)
        listed = await jobs.list_jobs(
            states=["running"], queue=None, owner="alice", limit=10, offset=0
        )
        assert [r.id for r in listed] == [job.id]

    as_leader(services, scenario)


def test_waiting_shapes_count_the_tasks_of_waiting_jobs(services: Services) -> None:
    jobs = services.jobs

    async def scenario() -> None:
        await services.ledger.register_node(Node("n1", {"cpu": 8000, "memory": 1 << 34}))
        await jobs.submit({"resources": {"cpu": "1"}, "count": 3}, "alice")
        await jobs.submit({"resources": {"cpu": "2", "memory": "1Gi"}}, "bob")
        await jobs.submit({"resources": {"cpu": "1"}}, "carol")
        assert jobs.waiting_shapes() == [{"cpu": 1000}, {"cpu": 2000, "memory": 1 << 30}]
        assert jobs.waiting_shapes(most=1) == [{"cpu": 1000}]

    asyncio.run(scenario())


def test_job_allocations_no_task_holds_are_released(services: Services) -> None:
    jobs = services.jobs

    async def scenario() -> None:
        await services.ledger.register_node(Node("n1", {"cpu": 8000}))
        job = await jobs.submit({"resources": {"cpu": "1"}}, "alice")
        await jobs.run_cycle()
        _, [task] = await jobs.get(job.id)
        orphan = await services.ledger.grant({"cpu": 2000}, owner="x", labels={JOB_LABEL: "j-old"})
        plain = await services.ledger.grant({"cpu": 500}, owner="bob")
        assert await jobs.release_orphans() == 1
        released = await services.ledger.get_allocation(orphan.id)
        assert (released.active, released.reason) == (False, ReleaseReason.CANCELLED)
        assert (await services.ledger.get_allocation(task.allocation_id)).active
        assert (await services.ledger.get_allocation(plain.id)).active
        assert await jobs.release_orphans() == 0

    as_leader(services, scenario)
