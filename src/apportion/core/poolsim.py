"""The scheduling cycle on a counted pool, for trace replays.

A replay of a parallel-machine log (KTH-SP2, Lublin) runs on many identical
nodes with one resource, and every task asks for a whole node. Then nodes
are interchangeable: which node a task takes changes nothing later on, and
everything ``schedule_cycle`` decides follows from counts (how many nodes
are idle, how many each job needs, when running jobs are expected to end).
``PoolCluster`` makes those decisions from the counts, in the same order and
by the same rules as the cycle (FIFO start until the first job that does
not fit; EASY with the pool reservation ``backfill.pool_reservation``
computes; conservative on ``CountProfile``, ``backfill.Profile`` on one
counted resource), with the same queue
policies and the same run-time estimates. It keeps the queue in policy order
between instants where the order cannot change (FIFO, shortest-first, fair
share within a queue), so a long queue is not sorted again at every event.
The conservative pass is ``pool_conservative``, fair share's order across
queues ``pool_fair``.

``eligible`` says when a replay may use it; ``tests/core/test_poolsim.py``
checks on generated traces that every job starts at the same instant as
with the node-level ``ClusterState`` and ``schedule_cycle``, for every
strategy and backfill mode. Speed: ``bench/bench_simulate.py``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from itertools import compress, count, islice
from typing import Any

from sortedcontainers import SortedList

from apportion.core.model import Health, Node, NodeState
from apportion.core.pool_adaptive import LearnedQueue
from apportion.core.pool_conservative import ASK, ConservativePass
from apportion.core.pool_fair import FairQueues
from apportion.core.scheduling.adaptive import RuntimeHistory
from apportion.core.scheduling.adaptive_order import AdaptiveOrder
from apportion.core.scheduling.adaptive_queue import AdaptiveQueue
from apportion.core.scheduling.cycle import SchedulerConfig, estimator
from apportion.core.scheduling.jobs import Job, Queue
from apportion.core.scheduling.policies import (
    INF,
    EarliestDeadline,
    FairShare,
    Fifo,
    OrderContext,
    Priority,
    ShortestFirst,
    strategy,
)

_KNOWN_ORDERS = (Fifo, Priority, FairShare, ShortestFirst, EarliestDeadline, AdaptiveOrder)


def eligible(
    nodes: Sequence[Node],
    jobs: Sequence[Job],
    config: SchedulerConfig,
    queues: Mapping[str, Queue],
) -> tuple[str, int] | None:
    """(resource, per-node amount) when the replay can run on a counted pool:
    identical ready nodes with one resource and no devices; jobs whose every
    task asks for a whole node, with no constraints, affinity or preemption;
    no quotas, no per-cycle limit; a queue policy this module knows."""
    if not nodes or config.max_placements is not None or config.queue_required:
        return None
    if any(q.quota for q in queues.values()):
        return None
    if type(strategy(config.strategy).order) not in _KNOWN_ORDERS:
        return None
    first = nodes[0]
    if len(first.resources) != 1 or first.devices:
        return None
    for node in nodes:
        if (node.resources != first.resources or node.labels != first.labels or node.devices
                or node.state is not NodeState.READY or node.health is Health.UNHEALTHY):
            return None
    ((resource, amount),) = first.resources.items()
    whole = {resource: amount}
    for job in jobs:
        if (job.constraints or job.affinity or job.anti_affinity or job.preemptible
                or any(spec.resources != whole for spec in job.tasks)):
            return None
    return resource, amount


class _View:
    """What queue policies read from the state (``FairShare``: capacity and
    each queue's use), answered from the pool's counts."""

    def __init__(self, pool: PoolCluster) -> None:
        self._pool = pool

    def capacity_total(self) -> dict[str, int]:
        return {self._pool.resource: self._pool.size * self._pool.amount}

    def usage(self, queue: str) -> Mapping[str, int]:
        return self._pool.usage.get(queue, {})


class PoolCluster:
    """Idle-node count, running jobs and the ordered queue of a counted pool."""

    def __init__(self, resource: str, amount: int, size: int, config: SchedulerConfig,
                 queues: Mapping[str, Queue], history: RuntimeHistory | None) -> None:
        self.resource, self.amount, self.size = resource, amount, size
        self.free = size
        self.config = config
        self.queues = queues
        self.strat = strategy(config.strategy)
        self.estimate = estimator(self.strat, history, config.default_estimate)
        self.history = history if self.strat.learns else None
        self._rank = None if self.history is None else self.history.rank
        # Without backfilling there is no aging bound (as in schedule_cycle).
        self._bound = config.aging_bound_s if config.backfill != "none" else INF
        self._begun: dict[str, tuple[float, float]] = {}
        """Learning: (start, the estimate it started with) of running jobs,
        for the correction of those that outrun it."""
        self.running: dict[str, tuple[Job, int]] = {}
        self.reserved: list[tuple[str, float]] = []
        """(job id, planned start) of the reservations the last cycle made
        (a resumed conservative pass leaves out those it kept unchanged)."""
        self.ends = SortedList()
        """(start + estimate, job id) of running jobs with an estimate."""
        self._ends_of: dict[str, float] = {}
        self._changes = 0
        """Bumped whenever the idle count or the running jobs change."""
        self.conservative = ConservativePass()
        self._planned: tuple[int, int, float, tuple[float, int] | None] | None = None
        """The last ``_reservation``: (``_changes``, need, first expected
        end, answer); between changes it stands while no end is overdue."""
        self.usage: dict[str, dict[str, int]] = {}
        """Each queue's use, for the orders that read it (not the static ones)."""
        self.pending: dict[str, Job] = {}
        order = self.strat.order
        self._tally = not isinstance(order, (Fifo, ShortestFirst, AdaptiveOrder))
        """Whether ``usage`` is kept: the adaptive order (``order_at``) and
        the static ones never read it, and each start and end of the
        adaptive replays paid a loop over the job's resources for it."""
        # Orders whose key does not move with time or use: kept sorted.
        self._static = not self.strat.learns and isinstance(order, (Fifo, ShortestFirst))
        self._at = (2 if isinstance(order, ShortestFirst) else 1) if self._static else 0
        """Where an entry's (id, estimate, task count) begin: after the sort
        key of a static order, at once in ``_entries``' others. The passes
        index entries from the front, as 3.11 specializes a tuple's item at
        an index from 0 up (one from the end goes the generic way), which
        counts at every waiting job of every pass."""
        self._sorted = SortedList()
        self._entry_of: dict[str, tuple[Any, ...]] = {}
        self._passed: tuple[int, tuple[str, float, int], tuple[Any, ...]] | None = None
        """After an EASY pass that went over every waiting job and started
        none: (``_changes``, the head's (id, start, extra), last entry)."""
        self.fair = (FairQueues(resource, amount, size, queues)
                     if isinstance(order, FairShare) and not self.strat.learns else None)
        if self.fair is not None:
            self._at = 2  # its entries: (-priority, submit time, id, estimate, task count)
        self._adaptive: AdaptiveQueue | None = None
        """Response-ratio order with a history and no backfilling: the queue
        grouped by signature, merged as far as the cycle reads it (the head,
        mostly). A backfill pass reads the whole queue, where one sort of it
        cost less than the merge (``bench/bench_simulate.py``)."""
        if (self.history is not None and isinstance(order, AdaptiveOrder)
                and order.by == "hrrn" and config.backfill == "none"):
            self._adaptive = AdaptiveQueue(order, self.history.signature, self.history.floors,
                                           self.history)
        self._learned: LearnedQueue | None = None
        """Response-ratio order with a history that plans with its own
        estimates, and backfilling: the queue in submit order with each job's
        signature, which gives the passes their entries in one go."""
        if (self.history is not None and isinstance(order, AdaptiveOrder)
                and order.by == "hrrn" and config.backfill != "none"
                and config.default_estimate is None):
            self._learned = LearnedQueue(self.history)
        self._view = _View(self)
        self._needs = [0] * (size + 2)
        """Pending jobs (not started in this cycle) by nodes needed."""
        self.least = size + 1
        """Fewest nodes any of them needs (``size + 1``: none pending). While
        fewer nodes are idle, no job can start, whatever the order or the
        backfill mode: a cycle stops there, or does not begin."""

    # -- the queue ---------------------------------------------------------

    def arrive(self, job: Job) -> None:
        self.pending[job.id] = job
        need = min(job.task_count, self.size + 1)
        self._needs[need] += 1
        self.least = min(self.least, need)
        if self._static:
            # The order's key (submit time; shortest-first: the estimate,
            # then submit time), the id, then the estimate and the task
            # count: after the unique id they never take part in the order,
            # and the backfill pass decides on them without looking the job
            # up. A static order has a static estimate (it does not learn).
            est = self.estimate(job)
            entry: tuple[Any, ...]
            if self._at == 1:
                entry = (job.submit_time, job.id, est, job.task_count)
            else:
                entry = (INF if est is None else est, job.submit_time, job.id, est,
                         job.task_count)
            self._entry_of[job.id] = entry
            self._sorted.add(entry)
            if self._passed is not None and entry < self._passed[2]:
                self._passed = None  # it joins the part the last pass went over
        elif self.fair is not None:
            self.fair.add(job, self.estimate(job))  # static: the order does not learn
        elif self._adaptive is not None:
            self._adaptive.add(job)
        elif self._learned is not None:
            self._learned.add(job)

    def _leave(self, job: Job) -> None:
        del self.pending[job.id]
        if self._static:
            self._sorted.remove(self._entry_of.pop(job.id))
        elif self.fair is not None:
            self.fair.remove(job)
        elif self._adaptive is not None:
            self._adaptive.remove(job)
        elif self._learned is not None:
            self._learned.remove(job)

    def _entries(self, now: float) -> Iterator[tuple[Any, ...]]:
        """The queue in policy order as entries ending (job id, estimate,
        task count); ``ASK`` for an estimate the caller must ask for."""
        if self._static:
            return iter(self._sorted)
        if self.fair is not None:
            return self.fair.order(self.usage)
        if self._learned is not None:
            found = self._learned.entries(now, self._bound)
            if found is not None:
                return iter(found)
        return ((job.id, ASK, job.task_count) for job in self._policy_order(now))

    def _policy_order(self, now: float) -> Iterator[Job]:
        pending = self.pending
        if self.fair is not None:
            return (pending[entry[2]] for entry in self.fair.order(self.usage))
        ranks = None if self.history is None else self.history.ranks
        if self._adaptive is not None:
            return self._adaptive.ordered_at(now, self._bound, self._rank or self.estimate, ranks)
        order = self.strat.order
        if isinstance(order, AdaptiveOrder):  # no context built at every event
            return iter(order.order_at(list(pending.values()), now, self._bound,
                                       self._rank or self.estimate, ranks))
        ctx = OrderContext(now, self.queues, self._view, self.estimate, self.config.aging_rate,
                           self._bound, self._rank, ranks)
        return iter(order.order(list(pending.values()), ctx))

    # -- running jobs --------------------------------------------------------

    def _begin(self, job: Job, need: int, now: float, started: list[Job]) -> None:
        needs = self._needs
        needs[need] -= 1
        if not needs[need] and need == self.least:
            # The next need with pending jobs, found in C: when the queue
            # empties this walks every need up to the pool's size.
            size = self.size
            self.least = next(compress(count(need + 1), islice(needs, need + 1, size + 1)),
                              size + 1)
        self.free -= need
        self._changes += 1
        self.running[job.id] = (job, need)
        est = self.estimate(job)
        if est is not None:
            self.ends.add((now + est, job.id))
            self._ends_of[job.id] = now + est
            if self.history is not None:
                self._begun[job.id] = (now, est)
        if self._tally:
            used = self.usage.setdefault(job.queue, {})
            for r, q in job.total.items():
                used[r] = used.get(r, 0) + q
            if self.fair is not None:
                self.fair.stale.add(job.queue)
        started.append(job)

    def finish(self, job_id: str) -> Job:
        """Release a running job's nodes; returns the job."""
        job, need = self.running.pop(job_id)
        self.free += need
        self._changes += 1
        end = self._ends_of.pop(job_id, None)
        if end is not None:
            self.ends.remove((end, job_id))
            self._begun.pop(job_id, None)
        if self._tally:
            used = self.usage[job.queue]
            for r, q in job.total.items():
                used[r] -= q
            if self.fair is not None:
                self.fair.stale.add(job.queue)
        return job

    # -- one cycle -------------------------------------------------------------

    def cycle(self, now: float) -> list[str]:
        """The jobs that start at ``now``, as ``schedule_cycle`` would start them."""
        self.reserved.clear()
        if self.history is not None:
            self._correct(now)  # before anything is planned on the old ends
        mode = self.config.backfill
        if self.free < self.least:
            if mode == "easy":
                self._plan_head(now)
            return []
        if mode == "conservative":
            started = self.conservative.run(self, now)
        else:
            started = self._in_order(now, mode == "easy")
        for job in started:
            self._leave(job)
        return [job.id for job in started]

    def _in_order(self, now: float, easy: bool) -> list[Job]:
        started: list[Job] = []
        if self._adaptive is not None:  # no backfilling: the merge's jobs as they come
            for job in self._policy_order(now):
                if job.task_count > self.free:
                    break
                self._begin(job, job.task_count, now, started)
            return started
        pending = self.pending
        it = self._entries(now)
        head = None
        ii = self._at
        ci = ii + 2
        for entry in it:
            need = entry[ci]
            if need > self.free:
                head = pending[entry[ii]]
                break
            self._begin(pending[entry[ii]], need, now, started)
        if head is None or not easy:
            return started
        # The head's reservation is planned even when nothing will pass it,
        # as the cycle plans it: a reservation that moves later is what the
        # estimate audit counts, and it must count the same on both paths.
        found = self._reservation(head.task_count, now)
        if found is None:
            return started  # the head's start cannot be planned: nothing passes it
        at, extra = found
        self.reserved.append((head.id, at))
        plan = (head.id, at, extra)
        last, self._passed = self._passed, None
        if self._static and last is not None and last[:2] == (self._changes, plan):
            # Nothing started or ended since a pass that started nothing
            # under this same reservation: the jobs it went over still cannot
            # start (``now`` only grew), so the pass goes on from where it ended.
            it = self._sorted.irange(last[2], inclusive=(False, True))
        if self._backfill(it, now, at, extra, started) and self._static:
            self._passed = (self._changes, plan, self._sorted[-1])
        return started

    def _backfill(self, it: Iterator[tuple[Any, ...]], now: float, at: float, extra: int,
                  started: list[Job]) -> bool:
        """EASY's pass behind the head; True when it went over every job
        and started none."""
        pending = self.pending
        free, least = self.free, self.least
        if free < least:
            # No waiting job fits: the pass stops at its first job, if any.
            return next(it, None) is None
        before = len(started)
        ii = self._at
        ei, ci = ii + 1, ii + 2
        # Most waiting jobs need more nodes than are idle: the loop skips
        # them in as few steps as it can (one subscript, one comparison).
        for entry in it:
            if entry[ci] > free:
                continue  # the summed-free check
            need = entry[ci]
            est = entry[ei]
            if est is ASK:
                est = self.estimate(pending[entry[ii]])
            if est is not None and now + est <= at:
                self._begin(pending[entry[ii]], need, now, started)
            elif need <= extra:
                self._begin(pending[entry[ii]], need, now, started)
                extra -= need
            else:
                continue
            free, least = self.free, self.least
            if free < least:
                return False  # it started one, and no waiting job fits now
        return len(started) == before

    def _correct(self, now: float) -> None:
        """``RuntimeHistory.correct`` on the pool: every running job past its
        planned end at ``now`` gets the end its history extends it to."""
        assert self.history is not None
        ends = self.ends
        lists = ends._lists  # read only: the first end without two calls into SortedList
        if not lists or lists[0][0][0] > now:
            return  # nothing overdue (most cycles): no bisection
        cut = int(ends.bisect_left((math.nextafter(now, math.inf),)))
        if not cut:
            return
        self._changes += 1
        for end, job_id in list(ends.islice(0, cut)):
            start, est = self._begun[job_id]
            job = self.running[job_id][0]
            new = start + self.history.extend_run(job, start, est, now)
            ends.remove((end, job_id))
            ends.add((new, job_id))
            self._ends_of[job_id] = new

    def _plan_head(self, now: float) -> None:
        """The head's reservation on a cycle that starts nothing, as the
        cycle plans it: the estimate audit counts the moves of every planned
        reservation, on both paths alike."""
        if self._static:
            if not self._sorted:
                return
            entry = self._sorted[0]  # the head, without a generator over the queue
            head_id, need = entry[self._at], entry[self._at + 2]
        else:
            head = None if self._learned is None else self._learned.head(now, self._bound)
            if head is None:
                first = next(self._entries(now), None)
                if first is None:
                    return
                head = first[self._at], first[self._at + 2]
            head_id, need = head
        if found := self._reservation(need, now):
            self.reserved.append((head_id, found[0]))

    def _reservation(self, need: int, now: float) -> tuple[float, int] | None:
        """``pool_reservation``: the first expected end after which the idle
        nodes cover ``need`` (jobs past their estimate end "now"), and how
        many nodes stay idle then after the head takes its share."""
        free = self.free
        if free >= need:
            return now, free - need
        # Unchanged nodes and ends, none of them due yet: the same answer as
        # last time (``now`` enters only through the ends already due).
        last = self._planned
        if last is not None and last[0] == self._changes and last[1] == need and last[2] > now:
            return last[3]
        t = now
        first = INF
        running = self.running
        # All the jobs expected to end at one instant free their nodes
        # together: stop only where the instant changes.
        for end, job_id in self.ends:
            if first == INF:
                first = end
            at = end if end > now else now
            if at != t and free >= need:
                break
            t = at
            free += running[job_id][1]
        found = None if free < need else (t, free - need)
        self._planned = (self._changes, need, first, found)
        return found
