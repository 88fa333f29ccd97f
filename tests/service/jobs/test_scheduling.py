"""The leader's scheduling loop (``service/jobs/scheduling.py``): a preempting
job waits for its victims' processes to exit and then starts where it was
placed; a start the store refuses (the job was cancelled through another
server) leaves no grant behind; a finished job's run time is learned at the
next cycle; the cycle runs with the collector paused, the collection it
owes right after."""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

import pytest

from apportion.core.model import Node, ReleaseReason
from apportion.core.scheduling import CycleResult, schedule_cycle
from apportion.service.jobs import TaskReport, scheduling
from apportion.service.wiring import Services
from service.builders import AGENT, as_leader, stored_events


@pytest.fixture
def settings_given() -> dict[str, Any]:
    return {"strategy": "priority"}


def test_a_preempting_job_waits_for_its_victims_exit_then_starts_in_its_place(
    services: Services,
) -> None:
    jobs = services.jobs

    async def scenario() -> None:
        await services.agents.register(Node("n1", {"cpu": 4000}), AGENT)
        low = await jobs.submit(
            {"command": ["sleep", "1d"], "resources": {"cpu": "4"}, "preemptible": True}, "lo"
        )
        await jobs.run_cycle()
        _, [victim] = await jobs.get(low.id)
        await services.agents.report("n1", victim.id, TaskReport("running"))

        high = await jobs.submit(
            {"command": ["true"], "resources": {"cpu": "4"}, "priority": 100}, "hi"
        )
        before = services.uow.commits[0]
        await jobs.run_cycle()
        assert services.uow.commits[0] == before + 1
        assert list(jobs.switches) == [high.id]
        assert jobs.switches[high.id].victims == {low.id}
        _, [victim] = await jobs.get(low.id)
        assert (victim.state, victim.stop_state) == ("running", "preempted")
        # The victim's stop and the switch: one decision, one commit.
        commits = services.uow.commits[0]
        decided = [(e.kind, e.subject) for e in stored_events(services)][-2:]
        assert decided == [("task.stop", victim.id), ("job.preempting", high.id)]
        [switch] = [e.data for e in stored_events(services) if e.kind == "job.preempting"]
        assert (switch["unit"], switch["victims"]) == (high.id, [low.id])
        await jobs.run_cycle()  # the victim still runs: nothing starts
        assert services.uow.commits[0] == commits
        _, started = await jobs.get(high.id)
        assert started == []
        assert services.ledger.allocated("n1") == {"cpu": 4000}

        await services.agents.report(
            "n1", victim.id, TaskReport("exited", signalled=True, exit_code=-15)
        )
        released = await services.ledger.get_allocation(victim.allocation_id)
        assert released.reason is ReleaseReason.PREEMPTED
        await jobs.run_cycle()
        assert jobs.switches == {}
        row, [task] = await jobs.get(high.id)
        assert (row.state, task.node, task.state) == ("scheduled", "n1", "scheduled")
        low_row, _ = await jobs.get(low.id)
        assert (low_row.state, low_row.preemptions) == ("preempted", 1)

    as_leader(services, scenario)


def test_a_start_the_store_refuses_leaves_no_grant_behind(
    servers: Callable[..., Services],
) -> None:
    leader, other = servers("leader"), servers("other")

    async def scenario() -> None:
        await leader.ledger.register_node(Node("n1", {"cpu": 4000}))
        job = await leader.jobs.submit({"resources": {"cpu": "2"}}, "alice")
        await other.jobs.cancel(job.id)  # the leader has not heard of it yet
        assert leader.jobs.live[job.id].state == "pending"
        result = await leader.jobs.run_cycle()
        assert [p.job_id for p in result.placements] == [job.id]  # decided on the old picture
        assert leader.ledger.allocated("n1") == {"cpu": 0}
        assert job.id not in leader.jobs.live
        row, started = await leader.jobs.get(job.id)
        assert (row.state, started) == ("cancelled", [])

    as_leader(leader, scenario)


def test_a_finished_jobs_run_time_is_learned_at_the_next_cycle(services: Services) -> None:
    jobs = services.jobs

    async def scenario() -> None:
        await services.ledger.register_node(Node("n1", {"cpu": 4000}))
        job = await jobs.submit({"name": "etl", "resources": {"cpu": "1"}}, "alice")
        await jobs.run_cycle()
        row = await jobs.complete(job.id, succeeded=True, exit_code=0)
        assert jobs.history.runs == {}  # not while a cycle may be reading it
        await jobs.run_cycle()
        assert row.ended_at is not None and row.started_at is not None
        learned = {tuple(runs) for runs in jobs.history.runs.values()}
        assert learned == {(row.ended_at - row.started_at,)}

    as_leader(services, scenario)


def test_a_cycle_after_its_server_is_deposed_starts_nothing(services: Services) -> None:
    jobs = services.jobs

    async def scenario() -> None:
        await services.ledger.register_node(Node("n1", {"cpu": 4000}))
        job = await jobs.submit({"resources": {"cpu": "2"}}, "alice")
        await services.leadership.stop()  # deposed: no epoch to fence a start on
        result = await jobs.run_cycle()
        assert [p.job_id for p in result.placements] == [job.id]  # decided, not written
        assert services.ledger.allocated("n1") == {"cpu": 0}
        row, started = await jobs.get(job.id)
        assert (row.state, started) == ("pending", [])

    as_leader(services, scenario)


@pytest.mark.parametrize("in_a_worker", [False, True])
def test_the_leader_decides_with_the_collector_paused_and_collects_after(
    services: Services, monkeypatch: pytest.MonkeyPatch, in_a_worker: bool
) -> None:
    jobs = services.jobs
    enabled_inside: list[bool] = []
    collections: list[int] = []
    jobs.scheduler.collection_listeners.append(lambda c: collections.append(c.generation))
    if in_a_worker:  # a big cycle's path: the worker thread pauses too
        monkeypatch.setattr(scheduling, "_small", lambda *a: False)

    def decide(*args: Any, **kwargs: Any) -> CycleResult:
        enabled_inside.append(gc.isenabled())
        return schedule_cycle(*args, **kwargs)

    monkeypatch.setattr(scheduling, "schedule_cycle", decide)

    async def scenario() -> None:
        await services.ledger.register_node(Node("n1", {"cpu": 4000}))
        job = await jobs.submit({"resources": {"cpu": "1"}}, "alice")
        thresholds = gc.get_threshold()
        # A young collection is owed at once; a full one never (that one is
        # left to the collector, and the suite's earlier tests may have
        # brought the full count past its threshold).
        gc.set_threshold(1, thresholds[1], 1 << 30)
        try:
            result = await jobs.run_cycle()
        finally:
            gc.set_threshold(*thresholds)
        assert [p.job_id for p in result.placements] == [job.id]
        assert enabled_inside == [False] and gc.isenabled()
        if in_a_worker:
            # The event loop's thread may take the owed collection first, as
            # soon as the collector is back on: at most the one, then.
            assert len(collections) <= 1
        else:
            assert len(collections) == 1 and collections[0] >= 0

    as_leader(services, scenario)
