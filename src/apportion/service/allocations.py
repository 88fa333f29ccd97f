"""Releasing an allocation by hand, without pulling resources from under a task.

A task owns its allocation: its process runs on those resources until the
agent reports it gone, and only that report (or the node's loss) releases
them. Releasing a task's allocation directly would hand a busy GPU to the
next job, so it is refused (409 ``allocation_owned_by_task``) with the job
to cancel instead. An admin may force it: the job is cancelled first, and
the allocation is released by the task's end, once its process has exited.

The reasons the system records (a node lost, a preemption, a task's end)
are the system's: a user releasing a plain allocation says ``released`` or
``cancelled``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import sqlalchemy as sa

from apportion.core.model import Allocation, ReleaseReason
from apportion.core.records import TaskRow
from apportion.exceptions import AllocationOwnedByTask, PermissionDenied, ReasonReserved
from apportion.service.jobs import ACTIVE_TASK, JOB_LABEL, JobsService
from apportion.service.ledger_service import LedgerService
from apportion.service.unit_of_work import UnitOfWork
from apportion.store import jobs_tables as jt

USER_REASONS = (ReleaseReason.RELEASED, ReleaseReason.CANCELLED)
FORCE_WAIT_S = 30.0


class AllocationsService:
    """Releases that respect the tasks holding allocations."""

    def __init__(self, uow: UnitOfWork, ledger: LedgerService, jobs: JobsService,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.uow = uow
        self.ledger = ledger
        self.jobs = jobs
        self.clock = clock

    async def release(self, alloc_id: str, reason: ReleaseReason, *, admin: bool,
                      force: bool = False, wait_s: float = FORCE_WAIT_S
                      ) -> tuple[Allocation, bool]:
        """Release ``alloc_id``; returns it and whether it is released now
        (False: a forced release still waits for the task's process)."""
        if not admin and reason not in USER_REASONS:
            allowed = " or ".join(r.value for r in USER_REASONS)
            raise ReasonReserved(f"reason: {reason.value} is recorded by apportion itself; "
                                 f"a release by hand is {allowed}", field="reason")
        if force and not admin:
            raise PermissionDenied("force: only an admin may force the release of a task's "
                                   "allocation", field="force")
        alloc = await self.ledger.get_allocation(alloc_id)
        task = await self._owner(alloc) if alloc.active else None
        if task is None:
            return await self.ledger.release(alloc_id, reason), True
        if not force:
            raise AllocationOwnedByTask(
                f"allocation {alloc_id} is held by task {task.index} of job {task.job_id}, "
                f"whose process still runs on it; cancel the job instead (apportion jobs "
                f"cancel {task.job_id})", id=alloc_id, job=task.job_id, task=task.id)
        await self.jobs.cancel(task.job_id)
        return await self._released(alloc_id, wait_s)

    async def _owner(self, alloc: Allocation) -> TaskRow | None:
        """The live task that holds ``alloc``, if any."""
        if JOB_LABEL not in alloc.labels:
            return None

        def read(conn: sa.Connection) -> TaskRow | None:
            return jt.task_of_allocation(conn, alloc.id)

        task: TaskRow | None = await self.uow.read(read)
        return task if task is not None and task.state in ACTIVE_TASK else None

    async def _released(self, alloc_id: str, wait_s: float) -> tuple[Allocation, bool]:
        """Wait for the task's end to release the allocation."""
        deadline = self.clock() + wait_s
        while True:
            alloc = await self.ledger.get_allocation(alloc_id)
            if not alloc.active or self.clock() >= deadline:
                return alloc, not alloc.active
            await asyncio.sleep(0.05)
