"""Replay a workload through the scheduling core on a virtual clock.

The engine is an event loop over job arrivals and ends. At one instant all
ends are processed first, then all arrivals, then one call of
``schedule_cycle``, the very function the server calls, on a
``ClusterState`` kept up to date between instants. Where the cluster is a
counted pool (identical one-resource nodes, each task a whole node: the
parallel-machine logs), ``poolsim.PoolCluster`` makes the same decisions from
counts (``tests/core/test_poolsim.py`` checks that every job starts at the
same instant both ways). A job runs for its actual
run time; its estimate only feeds ordering and backfill decisions. A
preempted job loses its progress and goes back to the queue.

Pure: no I/O, no clock (``wall_s`` is measured by the caller), no
randomness. Reading trace files lives in ``apportion.traces``.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from operator import attrgetter
from typing import TypeVar

from apportion.core import gpufleet, poolsim
from apportion.core.frozen import quick_init
from apportion.core.model import Node
from apportion.core.scheduling.adaptive import RuntimeHistory
from apportion.core.scheduling.cycle import CycleResult, SchedulerConfig, schedule_cycle
from apportion.core.scheduling.jobs import Job, Queue
from apportion.core.scheduling.policies import strategy
from apportion.core.scheduling.state import ClusterState

_T = TypeVar("_T")

BOUND_S = 10.0
"""Bounded slowdown's floor on run time: ``max(1, (wait + run) / max(run, 10))``."""


@dataclass(frozen=True, slots=True)
class SimJob:
    """A job of a trace: the job as submitted and what really happened."""

    job: Job
    run_time: float
    estimate_given: bool = True
    """False when the trace had no estimate and the actual run time stands in
    for it (for every strategy, unless ``SimConfig.learn_only``)."""
    real_wait: float | None = None
    """The wait the real scheduler produced (SWF field 3), if recorded."""


@dataclass(frozen=True, slots=True)
class SimConfig:
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    primary: str = "cpu"
    """The resource utilization is measured on (cpu for SWF, gpu for GPU traces)."""
    max_series: int = 2000
    """Points kept for the queue-length and utilization time series."""
    learn_only: bool = False
    """Hide the stand-in estimates (``SimJob.estimate_given`` False) from
    learning strategies, so they plan on what they learn alone; by default
    every strategy plans on the same information."""


@quick_init
@dataclass(frozen=True, slots=True)
class JobRecord:
    id: str
    queue: str
    submit: float
    start: float
    end: float
    run: float
    wait: float
    size: int
    """Amount of the primary resource held (processors for SWF, in base units)."""
    preempted: int = 0
    deadline_missed: bool = False


@dataclass(frozen=True, slots=True)
class SimResult:
    records: tuple[JobRecord, ...]
    metrics: Mapping[str, float | int | None]
    series_t: tuple[float, ...]
    series_queue: tuple[int, ...]
    series_util: tuple[float, ...]
    unscheduled: tuple[str, ...]
    """Jobs still waiting when nothing was left to run or arrive."""


@dataclass(slots=True)
class _Run:
    job: Job
    run_time: float
    submit: float
    amount: int
    """What it holds of the primary resource (utilization's measure)."""
    start: float = 0.0
    end: float = 0.0
    preempted: int = 0
    lost: float = 0.0
    seq: int = -1


def simulate(
    jobs: Sequence[SimJob],
    nodes: Sequence[Node],
    config: SimConfig = SimConfig(),
    *,
    queues: Mapping[str, Queue] | None = None,
    progress: Callable[[int, int], None] | None = None,
    counted_pool: bool = True,
) -> SimResult:
    """Replay ``jobs`` on ``nodes``; returns per-job records and metrics.
    ``counted_pool=False`` keeps the node-level model even where the pool
    applies (the tests compare the two)."""
    learns = strategy(config.scheduler.strategy).learns
    hide = learns and config.learn_only
    primary = config.primary
    runs = {sj.job.id: _Run(_as_submitted(sj, hide) if hide else sj.job, sj.run_time,
                            sj.job.submit_time, sj.job.total.get(primary, 0))
            for sj in jobs}
    # ``fifo_key`` is (submit time, id): the order of arrival.
    order = sorted(runs.values(), key=attrgetter("job.fifo_key"))
    state = ClusterState(nodes)
    capacity = state.capacity_total().get(config.primary, 0)
    queues = dict(queues or {})
    for r in order:
        if r.job.queue not in queues:
            queues[r.job.queue] = Queue(r.job.queue)
    # Only a learning strategy reads the history; the others skip its upkeep.
    engine = _Engine(state, config, queues, runs, capacity, RuntimeHistory() if learns else None)
    shape = counted_pool and poolsim.eligible(nodes, [r.job for r in order], config.scheduler,
                                              queues)
    if shape:
        engine.pool = poolsim.PoolCluster(*shape, len(nodes), config.scheduler, queues,
                                          engine.history)
    elif counted_pool:
        fleet = gpufleet.eligible(nodes, [r.job for r in order], config.scheduler, queues)
        if fleet:
            engine.fleet = gpufleet.GpuFleet(nodes, *fleet, config.scheduler, queues,
                                             engine.history)
    engine.run(order, progress)
    return engine.result(jobs)


def _as_submitted(sj: SimJob, hide: bool) -> Job:
    if hide and not sj.estimate_given and sj.job.runtime_estimate is not None:
        return replace(sj.job, runtime_estimate=None)
    return sj.job


@dataclass(slots=True)
class _Engine:
    state: ClusterState
    config: SimConfig
    queues: dict[str, Queue]
    runs: dict[str, _Run]
    capacity: int
    history: RuntimeHistory | None = None
    pending: dict[str, Job] = field(default_factory=dict)
    ends: list[tuple[float, int, _Run]] = field(default_factory=list)
    """(end, start number, run) of running jobs: the number orders ends at
    one instant and is never equal, so runs are never compared."""
    done: list[_Run] = field(default_factory=list)
    used: int = 0
    busy_area: float = 0.0
    preemptions: int = 0
    seq: int = 0
    # The time series as three flat lists: a tuple per instant would be
    # hundreds of thousands of objects for the garbage collector to walk.
    series_t: list[float] = field(default_factory=list)
    series_queue: list[int] = field(default_factory=list)
    series_util: list[float] = field(default_factory=list)
    pool: poolsim.PoolCluster | None = None
    fleet: gpufleet.GpuFleet | None = None
    """Identical GPU nodes while every job starts on arrival; None once
    the node model decides (``gpufleet.GpuFleet.handover``)."""
    audit: EstimateAudit = field(default_factory=lambda: EstimateAudit())

    def run(self, order: list[_Run], progress: Callable[[int, int], None] | None) -> None:
        # Hot loop (one turn per instant): attributes read once into locals.
        total = len(order)
        ends, pending, pool, done = self.ends, self.pending, self.pool, self.done
        series_t, series_queue, series_util = self.series_t, self.series_queue, self.series_util
        capacity = self.capacity
        finish = self._finish if pool is None else self._finish_pooled
        cycle = self._cycle if pool is None else self._cycle_pooled
        if self.fleet is not None:
            finish, cycle = self._finish_fleet, self._cycle_fleet
        heappop = heapq.heappop
        # Submit times with an infinite one past the last: the common test
        # (no arrival now) needs no bounds check.
        submits = [r.submit for r in order]
        submits.append(math.inf)
        i = 0
        last_report = -1
        while i < total or ends:
            t_arr = submits[i]
            # min(t_arr, next end), which keeps t_arr on a tie
            now = ends[0][0] if ends and ends[0][0] < t_arr else t_arr
            while ends and ends[0][0] == now:
                finish(heappop(ends), now)
            while submits[i] == now and i < total:
                job = order[i].job
                pending[job.id] = job
                if pool is not None:
                    pool.arrive(job)
                i += 1
            if pending:
                cycle(now)
            series_t.append(now)
            series_queue.append(len(pending))
            series_util.append(self.used / capacity if capacity else 0.0)
            if progress is not None and len(done) // 500 != last_report:
                last_report = len(done) // 500
                progress(len(done), total)
        if progress is not None:
            progress(len(done), total)

    def _finish(self, entry: tuple[float, int, _Run], now: float) -> None:
        _, seq, run = entry
        if run.seq != seq:
            return  # preempted since; this end no longer happens
        self.state.finish(run.job.id)
        self._ended(run, now)

    def _finish_pooled(self, entry: tuple[float, int, _Run], now: float) -> None:
        """``_finish`` on the counted pool (which preempts nothing)."""
        run = entry[2]
        assert self.pool is not None
        self.pool.finish(run.job.id)
        self._ended(run, now)

    def _finish_fleet(self, entry: tuple[float, int, _Run], now: float) -> None:
        fleet = self.fleet
        if fleet is None:
            self._finish(entry, now)
            return
        run = entry[2]
        fleet.finish(run.job.id)
        self._ended(run, now)

    def _ended(self, run: _Run, now: float) -> None:
        self.used -= run.amount
        run.end = now
        if self.history is not None:
            self.history.record(run.job, run.run_time)
        self.done.append(run)

    def _cycle_pooled(self, now: float) -> None:
        pool = self.pool
        assert pool is not None
        started = pool.cycle(now)
        # Nothing started and no head planned (the pool preempts nothing):
        # the audit and the starts have nothing to record.
        if started or pool.reserved:
            self.audit.pool_cycle(pool, started, self.runs)
            self._started(started, now)

    def _cycle_fleet(self, now: float) -> None:
        fleet = self.fleet
        if fleet is not None:
            started = fleet.cycle(list(self.pending.values()), now)
            if started is not None:
                self.audit.started_with(started, self.runs)
                self._started([job_id for job_id, _ in started], now)
                return
            # A job waits: from here on the node model decides.
            fleet.handover(self.state)
            self.fleet = None
        self._cycle(now)

    def _cycle(self, now: float) -> None:
        result = schedule_cycle(
            self.state, list(self.pending.values()), now, self.config.scheduler,
            queues=self.queues, history=self.history,
        )
        self.audit.cycle(result, self.runs)
        for pre in result.preemptions:
            self._preempted(pre.victim, now)
        self._started([placement.job_id for placement in result.placements], now)

    def _started(self, job_ids: list[str], now: float) -> None:
        runs, pending, ends = self.runs, self.pending, self.ends
        for job_id in job_ids:
            run = runs[job_id]
            del pending[job_id]
            run.start = now
            self.seq += 1
            run.seq = self.seq
            heapq.heappush(ends, (now + run.run_time, self.seq, run))
            amount = run.amount
            self.used += amount
            self.busy_area += amount * run.run_time

    def _preempted(self, job_id: str, now: float) -> None:
        run = self.runs[job_id]
        amount = run.amount
        self.used -= amount
        # The work done so far is lost: take back the area counted at start
        # beyond what really ran.
        self.busy_area -= amount * (run.start + run.run_time - now)
        run.lost += now - run.start
        run.preempted += 1
        run.seq = -1
        self.preemptions += 1
        self.pending[job_id] = run.job

    def result(self, jobs: Sequence[SimJob]) -> SimResult:
        records = tuple(map(_record, self.done))
        metrics = _metrics(records, self, jobs)
        limit = self.config.max_series
        t = _downsample(self.series_t, limit)
        q = _downsample(self.series_queue, limit)
        u = _downsample(self.series_util, limit)
        return SimResult(records, metrics, t, q, u, tuple(sorted(self.pending)))


def _record(run: _Run) -> JobRecord:
    job, end = run.job, run.end
    deadline = job.deadline
    return JobRecord(
        job.id, job.queue, run.submit, run.start, end, run.run_time,
        end - run.submit - run.run_time, run.amount, run.preempted,
        deadline is not None and end > deadline,
    )


def bounded_slowdown(wait: float, run: float) -> float:
    return max(1.0, (wait + run) / max(run, BOUND_S))


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return 0.0
    k = max(0, math.ceil(p / 100 * len(sorted_values)) - 1)
    return float(sorted_values[k])


def _metrics(records: Sequence[JobRecord], engine: _Engine, jobs: Sequence[SimJob]
             ) -> dict[str, float | int | None]:
    waits = sorted(r.wait for r in records)
    n = len(records)
    first = min((r.submit for r in records), default=0.0)
    last = max((r.end for r in records), default=0.0)
    makespan = last - first
    out: dict[str, float | int | None] = {
        "jobs": n,
        "mean_wait_s": sum(waits) / n if n else 0.0,
        "median_wait_s": percentile(waits, 50),
        "p95_wait_s": percentile(waits, 95),
        "max_wait_s": waits[-1] if waits else 0.0,
        "mean_bounded_slowdown": (
            sum(bounded_slowdown(r.wait, r.run) for r in records) / n if n else 0.0
        ),
        "utilization": (
            engine.busy_area / (makespan * engine.capacity) if makespan and engine.capacity
            else 0.0
        ),
        "makespan_s": makespan,
        "preemptions": engine.preemptions,
        "deadline_misses": sum(1 for r in records if r.deadline_missed),
        "unscheduled": len(engine.pending),
    }
    out.update(engine.audit.metrics())
    out.update(_real(jobs))
    return out


def _real(jobs: Sequence[SimJob]) -> dict[str, float | int | None]:
    """The real scheduler's figures for the same jobs, where the trace has them."""
    pairs = [(sj.real_wait, sj.run_time) for sj in jobs if sj.real_wait is not None]
    if not pairs:
        return {"real_mean_wait_s": None, "real_mean_bounded_slowdown": None}
    return {
        "real_mean_wait_s": sum(w for w, _ in pairs) / len(pairs),
        "real_mean_bounded_slowdown": sum(bounded_slowdown(w, r) for w, r in pairs) / len(pairs),
    }


def _downsample(series: list[_T], limit: int) -> tuple[_T, ...]:
    step = max(1, len(series) // max(1, limit))
    return tuple(series[::step])


@dataclass(slots=True)
class EstimateAudit:
    """How good the run times a strategy planned with were: the mean absolute
    error of the estimate each job started with (against its real run time),
    and how often a waiting job's reservation moved later (a running job
    outlived the end planned for it)."""

    error_sum: float = 0.0
    estimated: int = 0
    reserved: dict[str, float] = field(default_factory=dict)
    moves: int = 0

    def cycle(self, result: CycleResult, runs: Mapping[str, _Run]) -> None:
        reserved = self.reserved
        for res in result.reservations:
            before = reserved.get(res.job_id)
            if before is not None and res.start > before:
                self.moves += 1
            reserved[res.job_id] = res.start
        for placement in result.placements:
            reserved.pop(placement.job_id, None)
            if placement.estimate is not None:
                self.error_sum += abs(placement.estimate - runs[placement.job_id].run_time)
                self.estimated += 1

    def pool_cycle(self, pool: poolsim.PoolCluster, started: list[str],
                   runs: Mapping[str, _Run]) -> None:
        """The same record from the counted pool's cycle: the reservations it
        planned (it plans the head's only when a job could pass it) and the
        estimate each started job was planned with."""
        reserved = self.reserved
        for job_id, at in pool.reserved:
            before = reserved.get(job_id)
            if before is not None and at > before:
                self.moves += 1
            reserved[job_id] = at
        for job_id in started:
            reserved.pop(job_id, None)
            run = runs[job_id]
            estimate = pool.estimate(run.job)
            if estimate is not None:
                self.error_sum += abs(estimate - run.run_time)
                self.estimated += 1

    def started_with(self, started: list[tuple[str, float | None]],
                     runs: Mapping[str, _Run]) -> None:
        """The record of a cycle that started ``started`` ((job id, the
        estimate it started with)) and planned nothing."""
        reserved = self.reserved
        for job_id, estimate in started:
            reserved.pop(job_id, None)
            if estimate is not None:
                self.error_sum += abs(estimate - runs[job_id].run_time)
                self.estimated += 1

    def metrics(self) -> dict[str, float | int | None]:
        return {
            "estimate_mae_s": self.error_sum / self.estimated if self.estimated else None,
            "reservation_moves": self.moves,
        }
