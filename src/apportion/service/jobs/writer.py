"""Running a transition and bringing this server's caches level after it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from apportion.core.model import Allocation
from apportion.core.records import JobRow
from apportion.core.scheduling import Job
from apportion.service.jobs.cache import JobCache
from apportion.service.jobs.model import job_of
from apportion.service.jobs.transitions import Change, Outcome
from apportion.service.ledger_service import LedgerService
from apportion.service.unit_of_work import Tx, UnitOfWork


class JobWriter:
    """Commits transitions as units of work and applies their outcomes."""

    def __init__(self, uow: UnitOfWork, ledger: LedgerService, cache: JobCache) -> None:
        self.uow = uow
        self.ledger = ledger
        self.cache = cache

    async def run(self, transition: Callable[[Change], Outcome], *,
                  grants: Sequence[Allocation] = (), heavy: bool = False) -> Outcome:
        """Commit ``transition`` (with ``grants`` taken by ``ledger.reserve``)
        and put what it changed in the cache. Shielded: a caller cancelled
        meanwhile (a deposed leader's loop) must not leave the cache behind
        what this server committed, as nothing else would bring it level."""
        return await asyncio.shield(self._run(transition, grants, heavy))

    async def _run(self, transition: Callable[[Change], Outcome],
                   grants: Sequence[Allocation], heavy: bool) -> Outcome:
        def work(tx: Tx) -> Outcome:
            change = Change(tx, self.job_for)
            transition(change)
            return change.flush()

        outcome = await self.ledger.commit_unit(work, grants=grants, heavy=heavy)
        missing = self.cache.apply(outcome)
        if missing:
            await self.uow.read(lambda conn: self.cache.refresh(conn, missing))
        return outcome

    async def run_all(self, transition: Callable[[Change], Outcome]) -> list[Outcome]:
        """Run a chunked transition (``answer["more"]``) until it is done,
        each chunk in a heavy unit of its own."""
        outcomes = [await self.run(transition, heavy=True)]
        while outcomes[-1].answer.get("more"):
            outcomes.append(await self.run(transition, heavy=True))
        return outcomes

    def job_for(self, row: JobRow) -> Job:
        """The core value of a job: the cached one (its spec never changes),
        or built from the stored spec. Safe from a worker thread: a read."""
        live = self.cache.jobs.get(row.id)
        return live.job if live is not None else job_of(row)
