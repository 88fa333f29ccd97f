"""A job's state changes (``service/jobs/transitions.py``), each committed with
its ledger change by the writer (``service/jobs/writer.py``): a task's end
and its release are one transaction, a chunked change goes on until done, a
usage record is written with the end of a task that ran, and a deposed
leader's decision is refused whole."""

from __future__ import annotations

import time
from functools import partial

import pytest
import sqlalchemy as sa

from apportion.core.model import Node, ReleaseReason
from apportion.exceptions import InvalidInput, NotLeader, Refused
from apportion.service.jobs import TaskReport
from apportion.service.jobs import transitions as t
from apportion.service.wiring import Services
from apportion.store.schema import allocations, tasks
from apportion.store.usage_tables import load_usage
from service.builders import AGENT, as_leader


def _stored(s: Services, alloc_id: str, task_id: str) -> tuple[str, str]:
    """The allocation's and the task's state, as the store has them."""
    with s.uow.engine.connect() as conn:
        alloc = conn.execute(
            sa.select(allocations.c.state).where(allocations.c.id == alloc_id)
        ).scalar_one()
        task = conn.execute(sa.select(tasks.c.state).where(tasks.c.id == task_id)).scalar_one()
    return alloc, task


def test_a_change_that_fails_after_ending_a_task_leaves_task_and_allocation_as_they_were(
    services: Services,
) -> None:
    async def scenario() -> None:
        await services.agents.register(Node("n1", {"cpu": 4000}), AGENT)
        job = await services.jobs.submit({"command": ["true"], "resources": {"cpu": "1"}}, "al")
        await services.jobs.run_cycle()
        _, [task] = await services.jobs.get(job.id)

        def end_then_fail(c: t.Change) -> t.Outcome:
            row = c.load(job.id)
            assert row is not None
            t.end_task(c, row, task, "failed", "ended, then the change failed")
            raise Refused("the change is refused after the end")

        with pytest.raises(Refused):
            await services.jobs.writer.run(end_then_fail)
        assert _stored(services, task.allocation_id, task.id) == ("active", "scheduled")
        assert services.ledger.allocated("n1") == {"cpu": 1000}
        [(_, cached)] = services.jobs.cache.tasks_on("n1")
        assert cached.state == "scheduled"

    as_leader(services, scenario)


def test_a_lease_job_is_cancelled_in_chunks_each_releasing_what_it_ended(
    services: Services,
) -> None:
    async def scenario() -> None:
        await services.ledger.register_node(Node("n1", {"cpu": 8000}))
        job = await services.jobs.submit({"resources": {"cpu": "1"}, "count": 5}, "al")
        await services.jobs.run_cycle()
        assert services.ledger.allocated("n1") == {"cpu": 5000}

        first = await services.jobs.writer.run(partial(t.cancel, job_id=job.id, limit=2))
        assert first.answer == {"more": True}
        assert [task.state for task in first.tasks] == ["cancelled", "cancelled"]
        assert first.rows[job.id].state == "cancelled"
        assert services.ledger.allocated("n1") == {"cpu": 3000}

        row = await services.jobs.cancel(job.id)  # the rest, chunk by chunk
        assert (row.state, row.tasks_active) == ("cancelled", 0)
        assert row.ended_at is not None
        assert services.ledger.allocated("n1") == {"cpu": 0}
        _, stored = await services.jobs.get(job.id)
        assert sorted(task.state for task in stored) == ["cancelled"] * 5
        assert job.id not in services.jobs.live
        # Cancelling an ended job changes nothing.
        again = await services.jobs.cancel(job.id)
        assert (again.state, again.ended_at) == ("cancelled", row.ended_at)

    as_leader(services, scenario)


def test_a_lease_job_is_completed_by_its_owner_but_a_process_ends_its_own_job(
    services: Services,
) -> None:
    async def scenario() -> None:
        await services.agents.register(Node("n1", {"cpu": 8000}), AGENT)
        lease = await services.jobs.submit({"resources": {"cpu": "2"}, "count": 2}, "al")
        command = await services.jobs.submit({"command": ["true"], "resources": {"cpu": "1"}}, "al")
        await services.jobs.run_cycle()
        row = await services.jobs.complete(lease.id, succeeded=True, exit_code=0)
        assert (row.state, row.tasks_active, row.tasks_succeeded) == ("succeeded", 0, 2)
        _, ended = await services.jobs.get(lease.id)
        released = [await services.ledger.get_allocation(task.allocation_id) for task in ended]
        assert [a.reason for a in released] == [ReleaseReason.COMPLETED] * 2
        assert services.ledger.allocated("n1") == {"cpu": 1000}
        with pytest.raises(InvalidInput, match=f"job {command.id} runs a command on an agent"):
            await services.jobs.complete(command.id, succeeded=False, exit_code=1)

    as_leader(services, scenario)


def test_a_task_that_ran_leaves_a_usage_record_of_its_queue(services: Services) -> None:
    async def scenario() -> None:
        await services.agents.register(Node("n1", {"cpu": 8000, "memory": 1 << 34}), AGENT)
        await services.jobs.put_queue("team-a", {}, 1.0, None, None)
        job = await services.jobs.submit(
            {
                "name": "train",
                "command": ["python", "train.py"],
                "resources": {"cpu": "2", "memory": "1Gi"},
                "queue": "team-a",
                "runtime_estimate": "90s",
            },
            None,
        )
        await services.jobs.run_cycle()
        _, [task] = await services.jobs.get(job.id)
        times = {"started_at": 100.0, "exited_at": 160.0}
        used = {"cpu_seconds": 30.4, "memory": 5e8}
        report = TaskReport("exited", exit_code=0, times=times, usage=used)
        await services.agents.report("n1", task.id, report)
        _, [ended] = await services.jobs.get(job.id)
        with services.uow.engine.connect() as conn:
            [record] = load_usage(conn)
        assert (record.task_id, record.name, record.owner, record.queue, record.command) == (
            task.id,
            "train",
            "",
            "team-a",
            "python train.py",
        )
        assert (record.state, record.requested, record.used) == (
            "succeeded",
            {"cpu": 2000, "memory": 1 << 30, "runtime_s": 90},
            {"cpu_seconds": 31, "memory": 500_000_000},
        )
        assert (record.started_at, record.finished_at) == (100.0, ended.ended_at)

    as_leader(services, scenario)


def test_a_task_no_agent_picked_up_is_stopped_and_its_job_placed_again(
    services: Services,
) -> None:
    async def scenario() -> None:
        await services.agents.register(Node("n1", {"cpu": 8000}), AGENT)
        job = await services.jobs.submit({"command": ["true"], "resources": {"cpu": "1"}}, "al")
        await services.jobs.run_cycle()
        _, [task] = await services.jobs.get(job.id)
        out = await services.jobs.writer.run(
            partial(t.stop_unclaimed, before=task.created_at, epoch=None)
        )
        assert out.tasks == []  # not older than the cut-off
        out = await services.jobs.writer.run(
            partial(t.stop_unclaimed, before=time.time() + 1, epoch=None)
        )
        [stopped] = out.tasks
        assert (stopped.id, stopped.stop_state) == (task.id, "cancelled")
        assert out.nodes == {"n1"}
        assert out.rows[job.id].reason.startswith("task 0 was not picked up on node n1 within")
        # The agent hears the stop; its exit report ends the task and frees the grant.
        [assignment] = await services.jobs.assignments("n1")
        assert assignment.stop is not None and assignment.stop.state == "cancelled"
        answer = await services.agents.report(
            "n1", task.id, TaskReport("exited", signalled=True, exit_code=-15)
        )
        assert answer["state"] == "cancelled"
        assert services.ledger.allocated("n1") == {"cpu": 0}
        row, _ = await services.jobs.get(job.id)
        assert row.state == "pending"

    as_leader(services, scenario)


def test_a_deposed_leaders_decision_is_refused_whole(services: Services) -> None:
    async def scenario() -> None:
        await services.ledger.register_node(Node("n1", {"cpu": 4000}))
        job = await services.jobs.submit({"resources": {"cpu": "1"}}, "al")
        await services.jobs.run_cycle()
        epoch = services.leadership.epoch
        assert epoch == 1
        with pytest.raises(NotLeader, match="leader epoch 0 was superseded by 1"):
            await services.jobs.writer.run_all(partial(t.node_lost, node="n1", epoch=0))
        row, [task] = await services.jobs.get(job.id)
        assert (row.state, task.state) == ("running", "running")
        assert services.ledger.allocated("n1") == {"cpu": 1000}
        assert await services.jobs.node_lost("n1") == 1  # the leader's own
        _, [task] = await services.jobs.get(job.id)
        assert task.state == "lost"
        assert services.ledger.allocated("n1") == {"cpu": 0}

    as_leader(services, scenario)


def test_progress_reports_only_move_a_task_forward(services: Services) -> None:
    async def scenario() -> None:
        await services.agents.register(Node("n1", {"cpu": 4000}), AGENT)
        job = await services.jobs.submit({"command": ["true"], "resources": {"cpu": "1"}}, "al")
        await services.jobs.run_cycle()
        _, [task] = await services.jobs.get(job.id)
        states = []
        for state in ("starting", "running", "starting", "scheduled"):
            answer = await services.jobs.task_report("n1", task.id, TaskReport(state))
            states.append(answer["state"])
        assert states == ["starting", "running", "running", "running"]
        row, [stored] = await services.jobs.get(job.id)
        assert (row.state, stored.state) == ("running", "running")

    as_leader(services, scenario)


def test_a_start_of_a_task_placed_already_is_refused(services: Services) -> None:
    async def scenario() -> None:
        await services.ledger.register_node(Node("n1", {"cpu": 4000}))
        job = await services.jobs.submit({"resources": {"cpu": "1"}, "count": 2}, "al")
        await services.jobs.run_cycle()
        row, placed = await services.jobs.get(job.id)
        assert (row.tasks_active, len(placed)) == (2, 2)
        alloc = services.ledger.reserve({"cpu": 1000}, node="n1", owner="al", labels={},
                                        devices=None)
        again = partial(t.start, job_id=job.id, epoch=services.leadership.epoch,
                        units=[t.UnitStart(f"{job.id}#1", ((1, alloc),))])
        with pytest.raises(Refused, match="placed already"):
            await services.jobs.writer.run(again, grants=[alloc])
        _, [*tasks_now] = await services.jobs.get(job.id)
        assert sorted(x.id for x in tasks_now) == sorted(x.id for x in placed)

    as_leader(services, scenario)
