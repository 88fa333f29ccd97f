"""Releasing by hand (``service/allocations.py``): a plain allocation goes
at once; a task's is refused unless an admin forces it, which cancels the
job; the system's own reasons are not a user's to give."""

from __future__ import annotations

import asyncio

import pytest

from apportion.core.model import Node, ReleaseReason
from apportion.exceptions import AllocationOwnedByTask, PermissionDenied, ReasonReserved
from apportion.service.wiring import Services


def test_a_user_releases_a_plain_allocation_with_a_users_reason(services: Services) -> None:
    async def scenario() -> None:
        await services.ledger.register_node(Node("n1", {"cpu": 4000}))
        alloc = await services.ledger.grant({"cpu": 1000}, owner="alice")
        with pytest.raises(ReasonReserved, match="reason: preempted is recorded by apportion "
                                                 "itself; a release by hand is released or "
                                                 "cancelled"):
            await services.allocations.release(alloc.id, ReleaseReason.PREEMPTED, admin=False)
        with pytest.raises(PermissionDenied, match="force: only an admin may force"):
            await services.allocations.release(alloc.id, ReleaseReason.RELEASED, admin=False,
                                               force=True)
        released, now = await services.allocations.release(alloc.id, ReleaseReason.CANCELLED,
                                                           admin=False)
        assert (released.active, released.reason, now) == (False, ReleaseReason.CANCELLED,
                                                           True)
        assert services.ledger.allocated("n1") == {"cpu": 0}

    asyncio.run(scenario())


def test_a_tasks_allocation_is_released_only_by_cancelling_its_job(services: Services) -> None:
    async def scenario() -> None:
        await services.leadership.campaign_round()
        assert services.leadership.is_leader
        try:
            await services.ledger.register_node(Node("n1", {"cpu": 4000}))
            job = await services.jobs.submit({"resources": {"cpu": "2"}}, "alice")
            await services.jobs.run_cycle()
            row, [task] = await services.jobs.get(job.id)
            assert (row.state, task.state) == ("running", "running")
            with pytest.raises(AllocationOwnedByTask,
                               match=f"allocation {task.allocation_id} is held by task 0 of job "
                                     f"{job.id}, whose process still runs on it; cancel the "
                                     f"job instead"):
                await services.allocations.release(task.allocation_id, ReleaseReason.RELEASED,
                                                   admin=True)
            alloc, now = await services.allocations.release(
                task.allocation_id, ReleaseReason.RELEASED, admin=True, force=True)
            # A lease has no process to wait for: the cancel releases it at once.
            assert (now, alloc.active, alloc.reason) == (True, False, ReleaseReason.CANCELLED)
            row, _ = await services.jobs.get(job.id)
            assert row.state == "cancelled"
        finally:
            await services.leadership.stop()

    asyncio.run(scenario())
