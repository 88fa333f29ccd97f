"""Queue policies (which pending job goes first) and the named strategies.

A strategy bundles a queue policy with the placement options (score plugins,
walk direction, candidate limit). The server takes the strategy name from
its settings and the simulator from ``--strategy``; both end up in
``STRATEGIES``.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Protocol

from apportion.core.errors import InvalidInput
from apportion.core.scheduling.adaptive_order import AdaptiveOrder
from apportion.core.scheduling.interface import PlaceOptions, ScorePlugin
from apportion.core.scheduling.jobs import Job, Queue
from apportion.core.scheduling.scorers import SCORERS

INF = float("inf")


class QueueUse(Protocol):
    """What queue policies read of the cluster (``FairShare``): a
    ``ClusterState``, or the simulator's counted pool (``poolsim``)."""

    def capacity_total(self) -> dict[str, int]: ...

    def usage(self, queue: str) -> Mapping[str, int]: ...


@dataclass(frozen=True, slots=True)
class OrderContext:
    now: float
    queues: Mapping[str, Queue]
    state: QueueUse
    estimate: Callable[[Job], float | None]
    aging_rate: float
    aging_bound: float = INF
    """Seconds after which a job goes ahead of every job that has waited
    less (the ``adaptive`` order)."""
    rank: Callable[[Job], float | None] | None = None
    """The run time to order by when it differs from the one planned with
    (``adaptive``: a learned value too poor to plan on does not reorder jobs)."""
    ranks: Callable[[Sequence[Job]], list[float | None]] | None = None
    """``rank`` of many jobs at once (``RuntimeHistory.ranks``): the
    ``adaptive`` order asks for the whole queue at every event."""


class OrderPolicy(Protocol):
    name: str

    def order(self, jobs: Sequence[Job], ctx: OrderContext) -> list[Job]: ...


fifo_key = attrgetter("fifo_key")
"""(submit time, job id), computed once per job: queues are sorted every cycle."""


class Fifo:
    """First come, first served: (submit time, job id)."""

    name = "fifo"

    def order(self, jobs: Sequence[Job], ctx: OrderContext) -> list[Job]:
        return sorted(jobs, key=fifo_key)


def effective_priority(job: Job, ctx: OrderContext) -> float:
    """The queue-clamped priority plus ``aging_rate`` per second waited:
    a job waiting (hi - lo) / aging_rate seconds outranks any job that arrives
    later, so low priority never starves."""
    queue = ctx.queues.get(job.queue)
    base = queue.clamp(job.priority) if queue is not None else job.priority
    return base + ctx.aging_rate * max(0.0, ctx.now - job.submit_time)


class Priority:
    """Highest effective priority (with aging) first, then FIFO."""

    name = "priority"

    def order(self, jobs: Sequence[Job], ctx: OrderContext) -> list[Job]:
        return sorted(jobs, key=lambda j: (-effective_priority(j, ctx), j.submit_time, j.id))


class ShortestFirst:
    """Shortest expected run time first (jobs with none go last), then FIFO."""

    name = "sjf"

    def order(self, jobs: Sequence[Job], ctx: OrderContext) -> list[Job]:
        def key(j: Job) -> tuple[float, float, str]:
            est = ctx.estimate(j)
            return (INF if est is None else est, j.submit_time, j.id)

        return sorted(jobs, key=key)


class EarliestDeadline:
    """Earliest deadline first; jobs without a deadline after, in FIFO order."""

    name = "sla"

    def order(self, jobs: Sequence[Job], ctx: OrderContext) -> list[Job]:
        return sorted(
            jobs, key=lambda j: (INF if j.deadline is None else j.deadline, j.submit_time, j.id)
        )


class FairShare:
    """Dominant-resource fair share across queues, weighted.

    A queue's share is its largest share of any resource in use (running
    jobs), divided by its weight. Jobs are interleaved by repeatedly taking
    the next job of the queue with the smallest share and adding that job's
    request to the queue's use, as if it started; within a queue, priority
    then FIFO. The order is fixed for the cycle, so backfill reservations
    keep their meaning. Quotas are enforced by the cycle, not here.
    """

    name = "fairshare"

    def order(self, jobs: Sequence[Job], ctx: OrderContext) -> list[Job]:
        cap = ctx.state.capacity_total()
        by_queue: dict[str, list[Job]] = {}
        for j in jobs:
            by_queue.setdefault(j.queue, []).append(j)
        heap: list[tuple[float, str]] = []
        pending: dict[str, deque[Job]] = {}
        used: dict[str, dict[str, int]] = {}
        for name, group in by_queue.items():
            group.sort(key=lambda j: (-j.priority, j.submit_time, j.id))
            pending[name] = deque(group)
            used[name] = dict(ctx.state.usage(name))
            heap.append((self._share(used[name], cap, ctx.queues.get(name)), name))
        heapq.heapify(heap)
        out: list[Job] = []
        while heap:
            _, name = heapq.heappop(heap)
            if not heap:  # the last queue with jobs left: shares choose no more
                out.extend(pending[name])
                break
            j = pending[name].popleft()
            out.append(j)
            u = used[name]
            for r, q in j.total.items():
                u[r] = u.get(r, 0) + q
            if pending[name]:
                heapq.heappush(heap, (self._share(u, cap, ctx.queues.get(name)), name))
        return out

    @staticmethod
    def _share(used: Mapping[str, int], cap: Mapping[str, int], queue: Queue | None) -> float:
        # ``max(..., default=0.0)`` over the resources with capacity, as a
        # loop: it runs once per job a fair-share order takes.
        dominant: float | None = None
        for r, q in used.items():
            if cap.get(r):
                share = q / cap[r]
                if dominant is None or share > dominant:
                    dominant = share
        if dominant is None:
            dominant = 0.0
        weight = queue.weight if queue is not None and queue.weight > 0 else 1.0
        return dominant / weight


# -- strategies -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Strategy:
    name: str
    order: OrderPolicy
    options: PlaceOptions
    learns: bool = False
    """Plans with the run times a ``RuntimeHistory`` learns (weighed against
    the jobs' own estimates) and corrects overdue jobs every cycle."""
    description: str = ""


def _scorers(**weights: float) -> tuple[tuple[ScorePlugin, float], ...]:
    return tuple((SCORERS[name], w) for name, w in weights.items())


_DEFAULT = PlaceOptions(_scorers(binpack=1.0, fitness=1.0, affinity=2.0, topology=1.0))

STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy("fifo", Fifo(), _DEFAULT, description="first come, first served"),
        Strategy("priority", Priority(), _DEFAULT,
                 description="highest priority first, aging so low priority never starves"),
        Strategy("fairshare", FairShare(), _DEFAULT,
                 description="dominant-resource fair share across queues, by weight"),
        Strategy("sjf", ShortestFirst(), _DEFAULT, description="shortest expected run first"),
        Strategy("sla", EarliestDeadline(), _DEFAULT,
                 description="earliest deadline first; reports jobs that will miss"),
        Strategy("cost", Fifo(), PlaceOptions(_scorers(cost=4.0, binpack=1.0, affinity=1.0,
                                                       topology=1.0), limit=64),
                 description="FIFO, cheapest nodes first"),
        Strategy("affinity", Fifo(), PlaceOptions(_scorers(affinity=4.0, topology=2.0,
                                                           binpack=1.0), limit=32),
                 description="FIFO, affinity and topology weigh most"),
        Strategy("adaptive", AdaptiveOrder(), _DEFAULT, learns=True,
                 description="highest response ratio next with an aging bound; run "
                 "times learned from finished jobs and corrected while they run"),
        Strategy("binpack", Fifo(), PlaceOptions(_scorers(binpack=1.0, affinity=1.0,
                                                          topology=1.0))),
        Strategy("spread", Fifo(), PlaceOptions(_scorers(spread=1.0, balanced=0.5,
                                                         affinity=1.0), loose=True, pack=False)),
    )
}


def strategy(name: str) -> Strategy:
    found = STRATEGIES.get(name)
    if found is None:
        raise InvalidInput(
            f"strategy: unknown {name!r}; use one of {', '.join(STRATEGIES)}", field="strategy"
        )
    return found
