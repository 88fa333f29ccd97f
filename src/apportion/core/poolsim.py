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

``eligible`` says when a replay may use it; ``tests/core/test_poolsim.py``
checks on generated traces that every job starts at the same instant as
with the node-level ``ClusterState`` and ``schedule_cycle``, for every
strategy and backfill mode. Speed: ``bench/bench_simulate.py``.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left, insort
from collections.abc import Iterator, Mapping, Sequence
from itertools import chain
from typing import Any

from sortedcontainers import SortedList

from apportion.core.countprofile import CountProfile, summed_releases
from apportion.core.model import Health, Node, NodeState
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

_ASK = object()
"""An entry's estimate not known yet (``PoolCluster._entries``)."""

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
        """(job id, planned start) of the reservations the last cycle made."""
        self.ends = SortedList()
        """(start + estimate, job id) of running jobs with an estimate."""
        self._ends_of: dict[str, float] = {}
        self._changes = 0
        """Bumped whenever the idle count or the running jobs change."""
        self._kept: tuple[int, list[tuple[str, float | None]], CountProfile, int] | None = None
        """After a conservative pass: (``_changes`` as it ended, each job it
        went over and did not start with the reservation it planned or None,
        the profile it left, how many it reserved), for ``_resume``."""
        self._releases: tuple[int, list[float], list[int]] | None = None
        """(``_changes``, distinct expected ends, idle nodes after each) for
        ``CountProfile.summed``."""
        self._planned: tuple[int, int, float, tuple[float, int] | None] | None = None
        """The last ``_reservation``: (``_changes``, need, first expected
        end, answer); between changes it stands while no end is overdue."""
        self.usage: dict[str, dict[str, int]] = {}
        """Each queue's use, for the orders that read it (not the static ones)."""
        self.pending: dict[str, Job] = {}
        order = self.strat.order
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
        self._fair = isinstance(order, FairShare)
        self._by_queue: dict[str, SortedList] = {}
        """Fair share: each queue with pending jobs, in the queue's order."""
        self._ranked: list[tuple[float, str]] = []
        """Fair share: (share of its use, name) of each queue with pending
        jobs, sorted: the order a cycle's heap of shares would pop them."""
        self._filed: dict[str, float] = {}
        """Fair share: the share each queue is filed under in ``_ranked``."""
        self._stale: set[str] = set()
        """Fair share: queues whose use or pending jobs changed since they
        were filed (``_refile``)."""
        self._adaptive: AdaptiveQueue | None = None
        """Response-ratio order with a history and no backfilling: the queue
        grouped by signature, merged as far as the cycle reads it (the head,
        mostly). A backfill pass reads the whole queue, where one sort of it
        cost less than the merge (``bench/bench_simulate.py``)."""
        if (self.history is not None and isinstance(order, AdaptiveOrder)
                and order.by == "hrrn" and config.backfill == "none"):
            self._adaptive = AdaptiveQueue(order, self.history.signature, self.history.floors)
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
        elif self._fair:
            q = self._by_queue.get(job.queue)
            if q is None:
                q = self._by_queue[job.queue] = SortedList()
                self._stale.add(job.queue)
            q.add((-job.priority, job.submit_time, job.id))
        elif self._adaptive is not None:
            self._adaptive.add(job)

    def _leave(self, job: Job) -> None:
        del self.pending[job.id]
        if self._static:
            self._sorted.remove(self._entry_of.pop(job.id))
        elif self._fair:
            q = self._by_queue[job.queue]
            q.remove((-job.priority, job.submit_time, job.id))
            if not q:
                del self._by_queue[job.queue]
                self._stale.add(job.queue)
        elif self._adaptive is not None:
            self._adaptive.remove(job)

    def _ordered(self, now: float) -> Iterator[Job]:
        pending = self.pending
        if self._static:
            return (pending[k[-3]] for k in self._sorted)
        return self._policy_order(now)

    def _entries(self, now: float) -> Iterator[tuple[Any, ...]]:
        """The queue in policy order as entries ending (job id, estimate,
        task count); ``_ASK`` for an estimate the caller must ask for."""
        if self._static:
            return iter(self._sorted)
        return ((job.id, _ASK, job.task_count) for job in self._policy_order(now))

    def _policy_order(self, now: float) -> Iterator[Job]:
        if self._fair:
            self._refile()
            return self._fair_order()
        pending = self.pending
        ctx = OrderContext(now, self.queues, self._view, self.estimate, self.config.aging_rate,
                           self._bound, self._rank,
                           None if self.history is None else self.history.ranks)
        if self._adaptive is not None:
            return self._adaptive.ordered(ctx)
        return iter(self.strat.order.order(list(pending.values()), ctx))

    def _fair_order(self) -> Iterator[Job]:
        """``FairShare.order``, lazily: its heap of queue shares, as a merge
        of the queues filed by share (``_ranked``) with a heap of those the
        cycle has taken from (each under its share grown by what it gave),
        each queue already sorted, so that a cycle pays for what it took."""
        ranked = list(self._ranked)  # ``_begin`` marks queues stale meanwhile
        n, p = len(ranked), 0
        pushed: list[tuple[float, str]] = []
        # Each queue is walked with an iterator (indexing a SortedList is a
        # search) and a count of the jobs it has left.
        walks: dict[str, tuple[Iterator[tuple[Any, ...]], list[int]]] = {}
        # A queue's use of the pool's one resource as the cycle began (read
        # before its first job is given out, so before any of its jobs
        # starts): what its later shares grow from.
        usage, resource, share = self.usage, self.resource, self._share
        used: dict[str, int] = {}
        pending = self.pending
        while True:
            if pushed and (p == n or pushed[0] < ranked[p]):
                name = heapq.heappop(pushed)[1]
            elif p < n:
                name = ranked[p][1]
                p += 1
            else:
                return
            walk = walks.get(name)
            if walk is None:
                q = self._by_queue[name]
                walk = walks[name] = (iter(q), [len(q)])
            entries, left = walk
            if p == n and not pushed:  # the last queue with jobs left: shares choose no more
                for entry in entries:
                    yield pending[entry[-1]]
                return
            j = pending[next(entries)[-1]]
            left[0] -= 1
            u = used.get(name)
            if u is None:
                u = usage.get(name, {}).get(resource, 0)
            yield j
            u = used[name] = u + j.total.get(resource, 0)
            if left[0]:
                heapq.heappush(pushed, (share(u, name), name))

    def _share(self, used: int, name: str) -> float:
        """``FairShare._share`` of a queue using ``used`` of the pool's one
        resource (every job's total names it alone), on ints: a fair-share
        order asks it for nearly every job it gives out, and the dictionary
        copies and walks of the general one showed
        (``tests/core/test_poolsim.py`` holds the two equal)."""
        capacity = self.size * self.amount
        queue = self.queues.get(name)
        weight = queue.weight if queue is not None and queue.weight > 0 else 1.0
        return (used / capacity if capacity else 0.0) / weight

    def _refile(self) -> None:
        """File again in ``_ranked`` the queues changed since the last cycle:
        between two cycles a job or two start or end, and the shares of the
        other queues stand."""
        ranked, filed, by_queue = self._ranked, self._filed, self._by_queue
        usage, resource = self.usage, self.resource
        for name in self._stale:
            old = filed.pop(name, None)
            if old is not None:
                del ranked[bisect_left(ranked, (old, name))]
            if name in by_queue:
                share = filed[name] = self._share(usage.get(name, {}).get(resource, 0), name)
                insort(ranked, (share, name))
        self._stale.clear()

    # -- running jobs --------------------------------------------------------

    def _begin(self, job: Job, need: int, now: float, started: list[Job]) -> None:
        needs = self._needs
        needs[need] -= 1
        if not needs[need] and need == self.least:
            while self.least <= self.size and not needs[self.least]:
                self.least += 1
        self.free -= need
        self._changes += 1
        self.running[job.id] = (job, need)
        est = self.estimate(job)
        if est is not None:
            self.ends.add((now + est, job.id))
            self._ends_of[job.id] = now + est
            if self.history is not None:
                self._begun[job.id] = (now, est)
        if not self._static:  # a static order reads no queue's use
            used = self.usage.setdefault(job.queue, {})
            for r, q in job.total.items():
                used[r] = used.get(r, 0) + q
            if self._fair:
                self._stale.add(job.queue)
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
        if not self._static:
            used = self.usage[job.queue]
            for r, q in job.total.items():
                used[r] -= q
            if self._fair:
                self._stale.add(job.queue)
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
            started = self._conservative(now)
        else:
            started = self._in_order(now, mode == "easy")
        for job in started:
            self._leave(job)
        return [job.id for job in started]

    def _in_order(self, now: float, easy: bool) -> list[Job]:
        started: list[Job] = []
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
        count = len(started)
        ii = self._at
        ei, ci = ii + 1, ii + 2
        # Most waiting jobs need more nodes than are idle: the loop skips
        # them in as few steps as it can (one subscript, one comparison).
        for entry in it:
            if entry[ci] > free:
                continue  # the summed-free check
            need = entry[ci]
            est = entry[ei]
            if est is _ASK:
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
        return len(started) == count

    def _correct(self, now: float) -> None:
        """``RuntimeHistory.correct`` on the pool: every running job past its
        planned end at ``now`` gets the end its history extends it to."""
        assert self.history is not None
        ends = self.ends
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
            head = next(self._ordered(now), None)
            if head is None:
                return
            head_id, need = head.id, head.task_count
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

    def _conservative(self, now: float) -> list[Job]:
        started: list[Job] = []
        if self.free < self.least:
            return started
        entries, resumed = self._resume(self._entries(now), now)
        seq: list[tuple[str, float | None]]
        if resumed is None:
            profile, reserved, seq = self._profile(now), 0, []
        else:
            profile, reserved, seq = resumed
        # Read once: this loop runs for every waiting job at every event.
        place, estimate, pending = profile.place, self.estimate, self.pending
        reserved_list = self.reserved
        depth = self.config.reservation_depth
        for entry in entries:
            need, est, job_id = entry[-1], entry[-2], entry[-3]
            if est is _ASK:
                est = estimate(pending[job_id])
            t = place(need, est, self.free, depth is not None and reserved >= depth)
            if t is None:
                seq.append((job_id, None))
            elif t <= now:
                self._begin(pending[job_id], need, now, started)
                if self.free < self.least:
                    break  # later reservations could only hold the rest back
            else:
                reserved_list.append((job_id, t))
                reserved += 1
                seq.append((job_id, t))
        # The profile as left (started jobs included) is what the next pass
        # would build again while nothing starts or ends meanwhile: kept
        # with the jobs it went over, their answers and what ``_begin`` made
        # of ``_changes``.
        self._kept = (self._changes, seq, profile, reserved)
        return started

    def _resume(self, entries: Iterator[tuple[Any, ...]], now: float
                ) -> tuple[Iterator[tuple[Any, ...]],
                           tuple[CountProfile, int, list[tuple[str, float | None]]] | None]:
        """Where the last conservative pass left off, when nothing started or
        ended since it, no planned end or step fell due, and the queue begins
        with the jobs it went over and did not start, in the same order: each
        of them gets the same answer again (a window that failed from the
        first step still holds the step that failed it; every later step is
        unchanged), so only the jobs after them are asked. The jobs the pass
        started hold in its profile the windows their ends give a fresh one,
        and an answer it gave before one of them was placed stands with it
        placed (that window still fits: the profile it left is nowhere
        negative); the proof is ``tests/core/test_poolsim.py``'s resumed
        against fresh passes. ``entries`` (``_entries``) come back with what
        was read of them put back when the pass cannot resume."""
        kept, self._kept = self._kept, None
        if kept is None or kept[0] != self._changes:
            return entries, None
        _, seq, profile, reserved = kept
        times = profile.times
        if len(times) > 1 and not times[1] > now:
            return entries, None
        taken: list[tuple[Any, ...]] = []
        for job_id, _ in seq:
            entry = next(entries, None)
            if entry is None:
                return iter(taken), None
            taken.append(entry)
            if entry[-3] != job_id:
                return chain(taken, entries), None
        times[0] = now
        self.reserved.extend((job_id, t) for job_id, t in seq if t is not None)
        return entries, (profile, reserved, seq)

    def _profile(self, now: float) -> CountProfile:
        # The running jobs' releases summed once per change to them: between
        # changes a conservative cycle only moves ``now`` over them.
        summed = self._releases
        if summed is None or summed[0] != self._changes:
            running = self.running
            # ``ends`` is sorted by end, so the release instants come in order.
            instants, cumulative = summed_releases(
                self.free, ((end, running[job_id][1]) for end, job_id in self.ends))
            summed = self._releases = (self._changes, instants, cumulative)
        return CountProfile.summed(now, self.free, summed[1], summed[2])

