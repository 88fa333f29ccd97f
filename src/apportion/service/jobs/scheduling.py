"""The scheduling loop: the leader's, and only while it leads.

Every cycle brings the kept ``ClusterState`` level with the ledger's memory
(nodes, and every active allocation as a running unit: ``clusterview.py``
says how, and when it is built afresh instead), asks the core's
``schedule_cycle`` what starts, and makes each decision real as one unit of
work per job: the grants exactly as the core placed them and the task rows,
committed together and fenced on the leader's epoch. The store refuses a
start whose job changed meanwhile (cancelled on another server, placed by a
deposed leader): its grants are undone and the job is looked at again.

A preempting unit whose victims run processes waits for them to exit
(``Switch``) and starts on exactly the placement chosen, in the first cycle
after the last victim's end, before anything else is placed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import chain

import structlog

from apportion.core.model import Allocation, Node
from apportion.core.records import JobRow
from apportion.core.scheduling import (
    ClusterState,
    CycleResult,
    Job,
    Placement,
    Queue,
    RuntimeHistory,
    SchedulerConfig,
    TaskPlacement,
    schedule_cycle,
)
from apportion.exceptions import ApportionError
from apportion.service.collector import OwedCollection, paused_then_collected
from apportion.service.jobs import transitions as t
from apportion.service.jobs.cache import JobCache
from apportion.service.jobs.clusterview import ClusterView, Kept, KeptCluster, level
from apportion.service.jobs.model import JOB_LABEL, LEASE_QUEUE, TASK_LABEL, unit_job_id
from apportion.service.jobs.writer import JobWriter
from apportion.service.ledger_service import LedgerService
from apportion.service.unit_of_work import UnitOfWork

log = structlog.get_logger(__name__)

START_CHUNK = 256
"""Tasks of one job started in one unit of work at most."""


@dataclass
class Switch:
    """A preempting unit waiting for its victims' processes to exit."""

    unit_id: str
    tasks: tuple[TaskPlacement, ...]
    victims: set[str]
    decided_at: float


class Scheduler:
    """Places waiting jobs, one cycle at a time, while this server leads."""

    def __init__(self, uow: UnitOfWork, ledger: LedgerService, cache: JobCache,
                 writer: JobWriter,
                 config: SchedulerConfig, queues: Callable[[], Mapping[str, Queue]],
                 epoch: Callable[[], int | None],
                 clock: Callable[[], float] = time.time) -> None:
        self.uow = uow
        self.ledger = ledger
        self.cache = cache
        self.writer = writer
        self.config = config
        self.queues = queues
        self.epoch = epoch
        self.clock = clock
        self.history = RuntimeHistory()
        self.last_cycle: CycleResult | None = None
        self.cycles = 0
        self.switches: dict[str, Switch] = {}
        self._finished: list[tuple[Job, float]] = []
        self.cycle_listeners: list[Callable[[float], None]] = []
        """Called with the duration of each cycle that had work."""
        self.collection_listeners: list[Callable[[OwedCollection], None]] = []
        """Called with the collection run right after a cycle, when one was
        owed (its time is also inside that cycle's duration)."""
        self._kept = KeptCluster()
        self._kick = asyncio.Event()
        self._lock = asyncio.Lock()
        cache.job_listeners.append(self._job_changed)

    def kick(self) -> None:
        """Something changed (a submission, a release, a node): run a cycle soon."""
        self._kick.set()

    def _job_changed(self, job: Job, old: JobRow | None, new: JobRow) -> None:
        if new.state == "succeeded" and new.started_at and new.ended_at and (
                old is None or old.state != "succeeded"):
            # Recorded at the next cycle's start: a cycle may be reading the
            # history in a worker thread right now.
            self._finished.append((job, new.ended_at - new.started_at))
        if new.state in ("succeeded", "failed", "cancelled"):
            for unit_id in [u for u in self.switches if unit_job_id(u) == new.id]:
                del self.switches[unit_id]
        self.kick()

    async def run_forever(self, idle_s: float = 1.0) -> None:
        while True:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a
            # cancel that lands as the event is set, and the stopping server
            # then waits for this loop forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(idle_s):
                    await self._kick.wait()
            self._kick.clear()
            if self.epoch() is None:
                continue
            try:
                await self.run_cycle()
            except Exception as exc:
                log.exception("cycle_failed", error=repr(exc))

    async def run_cycle(self) -> CycleResult:
        async with self._lock:
            await self._start_freed_switches()
            before, started = self.cycles, time.perf_counter()
            result = await self._cycle()
            if self.cycles != before:
                # Only cycles that had work: an idle one would dilute the figures.
                for listener in self.cycle_listeners:
                    listener(time.perf_counter() - started)
            return result

    async def _cycle(self) -> CycleResult:
        now = self.clock()
        for job, run_time in self._finished:
            self.history.record(job, run_time)
        self._finished.clear()
        pending = self._pending(now)
        if not pending:
            # Nothing waits: building the cluster view would be all the work.
            self.last_cycle = CycleResult((), (), (), {})
            return self.last_cycle
        view = self._snapshot()
        queues = dict(self.queues())
        decide = partial(schedule_cycle, pending=pending, now=now, config=self.config,
                         queues=queues, history=self.history)
        taken, epoch = self._kept.take(), self.epoch()

        def level_and_decide() -> tuple[Kept, CycleResult]:
            kept = level(taken, view, epoch)
            return kept, decide(kept.state)

        collected: list[OwedCollection] = []

        def paused() -> tuple[Kept, CycleResult]:
            # The collector waits while the cycle runs and collects what it
            # owes right after, before the grants (``service/collector.py``).
            # Cancelled, the cycle's worker thread runs on to its end with the
            # collector off; it turns it back on then, so it is never left off.
            decided, collection = paused_then_collected(level_and_decide)
            collected.append(collection)
            return decided

        # A cycle that raises or is cancelled keeps nothing: the next builds afresh.
        if _small(view, pending):
            # Two hand-offs to a worker thread cost more than a small cycle
            # itself (about 2 ms of a device switch's 30 ms, measured).
            kept, result = paused()
        else:
            # Bringing the state level and the decision are pure work on
            # snapshots: a worker thread does them, and the event loop goes on
            # answering meanwhile (a 10,000-task job once held it for
            # seconds). One hand-off for both: with thousands waiting, every
            # cycle of a busy cluster is here.
            kept, result = await asyncio.to_thread(paused)
        self._kept.keep(kept)
        for collection in collected:
            if collection.generation >= 0:
                for on_collection in self.collection_listeners:
                    on_collection(collection)
        self.last_cycle = result
        self.cycles += 1
        placed = {p.job_id: p for p in result.placements}
        victims: dict[str, list[str]] = {}
        for pre in result.preemptions:
            victims.setdefault(pre.by, []).append(pre.victim)
        for by, displaced in victims.items():
            await self._preempt(by, displaced, placed.get(by), now)
        starts: dict[str, list[tuple[str, tuple[TaskPlacement, ...]]]] = {}
        for placement in result.placements:
            if placement.job_id not in self.switches:
                starts.setdefault(unit_job_id(placement.job_id), []).append(
                    (placement.job_id, placement.tasks))
        await asyncio.gather(*(self._start(job_id, units) for job_id, units in starts.items()))
        return result

    def _pending(self, now: float) -> list[Job]:
        """The units to place (``JobCache.open``, and those of the deferred
        jobs past their ``not_before``), less the switches waiting for victims."""
        pending = list(chain.from_iterable(self.cache.open.values()))
        for lj in self.cache.deferred.values():
            if lj.not_before <= now:
                pending.extend(lj.open)
        if self.switches:
            pending = [u for u in pending if u.id not in self.switches]
        return pending

    # -- making decisions real ----------------------------------------------------

    async def _start(self, job_id: str,
                     units: Sequence[tuple[str, Sequence[TaskPlacement]]]) -> bool:
        """Grant and record the placed units of one job, in chunks of at most
        ``START_CHUNK`` tasks (each chunk all or none)."""
        chunk: list[tuple[str, Sequence[TaskPlacement]]] = []
        size = 0
        started = True
        for unit in units:
            count = sum(tp.count for tp in unit[1])
            if chunk and size + count > START_CHUNK:
                started &= await self._start_chunk(job_id, chunk)
                chunk, size = [], 0
            chunk.append(unit)
            size += count
        if chunk:
            started &= await self._start_chunk(job_id, chunk)
        return started

    async def _start_chunk(self, job_id: str,
                           units: Sequence[tuple[str, Sequence[TaskPlacement]]]) -> bool:
        live = self.cache.jobs.get(job_id)
        epoch = self.epoch()
        if live is None or live.ending or epoch is None:
            # No epoch: deposed while the cycle ran. Its decisions are the new
            # leader's to make, and a write without an epoch is not fenced.
            return False
        grants: list[Allocation] = []
        starts: list[t.UnitStart] = []
        try:
            for unit_id, placements in units:
                index = live.first_index(unit_id)
                allocs: list[tuple[int, Allocation]] = []
                for tp in placements:
                    for _ in range(tp.count):
                        alloc = self.ledger.reserve(
                            dict(tp.resources), node=tp.node, owner=live.row.owner,
                            labels={JOB_LABEL: job_id, TASK_LABEL: str(index)},
                            devices=dict(tp.devices) or None)
                        grants.append(alloc)
                        allocs.append((index, alloc))
                        index += 1
                starts.append(t.UnitStart(unit_id, tuple(allocs)))
        except ApportionError as exc:
            for alloc in grants:
                self.ledger.unreserve(alloc)
            log.warning("placement_failed", job=job_id, error=exc.message)
            self.kick()
            return False
        try:
            await self.writer.run(partial(t.start, job_id=job_id, units=starts,
                                          epoch=epoch), grants=grants)
        except ApportionError as exc:
            log.info("start_refused", job=job_id, error=exc.message)
            await self.uow.read(lambda conn: self.cache.refresh(conn, [job_id]))
            self.kick()
            return False
        return True

    async def start_freed_switches(self) -> None:
        """Start the preempting units whose victims have exited, now: called
        right after a victim's end commits, so the freed device does not wait
        for the loop's next turn (the loop would start them too)."""
        if self.switches and self.epoch() is not None:
            async with self._lock:
                await self._start_freed_switches()

    async def _start_freed_switches(self) -> None:
        """Start the preempting units whose victims have all exited."""
        for switch in list(self.switches.values()):
            switch.victims = {v for v in switch.victims if self._unit_active(v)}
            if switch.victims:
                continue
            del self.switches[switch.unit_id]
            await self._start(unit_job_id(switch.unit_id), [(switch.unit_id, switch.tasks)])

    def _unit_active(self, unit_id: str) -> bool:
        live = self.cache.jobs.get(unit_job_id(unit_id))
        return live is not None and any(live.unit_of(task) == unit_id for task in live.active())

    async def _preempt(self, by: str, victims: list[str],
                       placement: Placement | None, now: float) -> None:
        """Preempt the victims of unit ``by``; where their processes must
        exit first, ``by`` waits for them as a ``Switch``."""
        epoch = self.epoch()
        if epoch is None:  # deposed while the cycle ran, as in _start_chunk
            return
        try:
            outcome = await self.writer.run(partial(
                t.preempt, victims=victims, by=by, epoch=epoch,
                switch=placement is not None))
        except ApportionError as exc:
            log.info("preempt_refused", victims=victims, error=exc.message)
            return
        waiting = outcome.answer.get("waiting", [])
        if placement is not None and waiting:
            self.switches[by] = Switch(by, placement.tasks, set(waiting), now)

    # -- the cluster as the core sees it ------------------------------------------------

    def cluster_state(self, extra: Sequence[Node] = ()) -> ClusterState:
        """Nodes, and every active allocation as a running unit (see ``ClusterView``)."""
        return self._snapshot(extra).state()

    def level_now(self) -> ClusterState:
        """The kept state brought level with the ledger now, as the next cycle
        will find it (and kept for it): what checks compare with
        ``cluster_state``. Not while a cycle runs (it holds the state)."""
        kept = level(self._kept.take(), self._snapshot(), self.epoch())
        self._kept.keep(kept)
        return kept.state

    def _snapshot(self, extra: Sequence[Node] = ()) -> ClusterView:
        nodes = self.ledger.nodes
        return ClusterView([*nodes.values(), *extra], list(self.ledger.active().values()),
                           dict(self.cache.jobs), self.cache.stopping(),
                           None if extra else nodes)

    def queue_usage(self, queues: Iterable[str]) -> dict[str, dict[str, int]]:
        """What each queue's running jobs hold, as ``ClusterState.usage`` counts
        it (a unit counts its declared total), without building the state:
        alerts and metrics ask every few seconds. One pass over the active
        allocations; each unit is looked up once."""
        usage: dict[str, dict[str, int]] = {name: {} for name in queues}
        units: set[str] = set()
        for alloc in self.ledger.active().values():
            job_id = alloc.labels.get(JOB_LABEL)
            live = self.cache.jobs.get(job_id) if job_id else None
            if live is None:
                used = usage.get(LEASE_QUEUE)  # plain allocations: never a named queue
                if used is not None:
                    for r, q in alloc.resources.items():
                        used[r] = used.get(r, 0) + q
                continue
            units.add(live.unit_id(int(alloc.labels.get(TASK_LABEL, "0"))))
        for unit_id in units:
            unit = self.cache.jobs[unit_job_id(unit_id)].unit(unit_id)
            used = usage.get(unit.queue)
            if used is not None:
                for r, q in unit.total.items():
                    used[r] = used.get(r, 0) + q
        return usage


SMALL_CYCLE = 4096
"""Nodes times waiting tasks up to which a cycle runs on the event loop."""


def _small(view: ClusterView, pending: Sequence[Job]) -> bool:
    # Counting stops at the limit: thousands of jobs may wait.
    size = len(view.nodes) + len(view.allocations)
    if not size:
        return True
    limit = SMALL_CYCLE // size
    tasks = 0
    for job in pending:
        for spec in job.tasks:
            tasks += spec.count
        if tasks > limit:
            return False
    return True
