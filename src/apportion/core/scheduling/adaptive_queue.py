"""The ``adaptive`` order of a queue kept between events, given lazily.

``AdaptiveOrder.order`` ranks every waiting job and sorts them all at every
event, because response ratios move with the clock. But jobs of one
signature (the same keys and estimate: ``RuntimeHistory.signature``) share
one rank, and their ratios ``(wait + e) / e`` fall in submit order (an
earlier job has waited longer, and float subtraction and division keep
that order). So the sorted queue is a merge of the signatures' groups, each
in submit order, by (ratio, submit order): a heap of the groups' heads
gives it one job at a time, ranking one head per signature instead of
every job. A replay without backfilling takes jobs only until the first
that does not fit, usually the first: it pays for the heads, not for a
sort of the queue (``bench/bench_simulate.py``: adaptive+none). A backfill
pass reads the whole queue, and there one sort of it cost less than the
merge, so ``poolsim`` keeps this queue for replays without backfilling.

Given ``floors`` (``RuntimeHistory.floors``), a head whose rank would be
computed afresh is first filed under a ratio above its own (from a floor of
its rank), and ranked exactly only if that ratio comes to the top: the
exact ratio then takes its place, and a job is given out only from an
exact ratio that no other head's (floor or exact) is above, so the order is
the same. After each finished job a queue's heads mostly stand
far behind its leader.

Only the ``hrrn`` order is merged (``sjf`` and a rank that makes a ratio
NaN take ``AdaptiveOrder.order`` on the whole queue);
``tests/core/test_sched_adaptive_queue.py`` holds the merge to
``AdaptiveOrder.order`` on generated queues.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import TYPE_CHECKING

from apportion.core.scheduling.adaptive_order import AdaptiveOrder
from apportion.core.scheduling.jobs import Job

INF = float("inf")

_ABOVE = 1.0 + 2.0**-40
"""Widens a ratio from a floor past its float rounding (a few 1e-16)."""

Floors = Callable[[Sequence[Job]], tuple[list[float | None], list[bool]]]

if TYPE_CHECKING:
    from apportion.core.scheduling.policies import OrderContext

_Entry = tuple[float, str, Job]
"""(submit time, job id, job): a job's place in submit order (ids are unique,
so the job itself is never compared)."""


class AdaptiveQueue:
    """Waiting jobs grouped by signature, for ``AdaptiveOrder("hrrn")``."""

    def __init__(self, order: AdaptiveOrder, signature: Callable[[Job], Hashable],
                 floors: Floors | None = None) -> None:
        """``floors``: from the history that answers the contexts' ranks."""
        if order.by != "hrrn":
            raise ValueError("AdaptiveQueue merges the hrrn order only")
        self._order = order
        self._signature = signature
        self._floors = floors
        # Plain lists: jobs arrive in submit order and mostly leave from a
        # group's front, and a group holds a few jobs (``SortedList`` cost
        # more to walk and to keep than it saved).
        self._groups: dict[Hashable, list[_Entry]] = {}
        self._place: dict[str, tuple[Hashable, _Entry]] = {}

    def __len__(self) -> int:
        return len(self._place)

    def add(self, job: Job) -> None:
        sig = self._signature(job)
        entry = (job.submit_time, job.id, job)
        group = self._groups.get(sig)
        if group is None:
            self._groups[sig] = [entry]
        elif entry > group[-1]:
            group.append(entry)
        else:
            insort(group, entry)
        self._place[job.id] = (sig, entry)

    def remove(self, job: Job) -> None:
        sig, entry = self._place.pop(job.id)
        group = self._groups[sig]
        if group[0] is entry:
            del group[0]
        else:
            del group[bisect_left(group, entry)]
        if not group:
            del self._groups[sig]

    def ordered(self, ctx: OrderContext) -> Iterator[Job]:
        """The waiting jobs in ``AdaptiveOrder.order``'s order, as asked for."""
        now, bound = ctx.now, ctx.aging_bound
        groups = list(self._groups.values())
        # In each group the jobs past the bound are a prefix: they lead, in
        # submit order; the rest of each group is merged by ratio.
        starts = [0] * len(groups)
        if bound != INF and any(now - group[0][0] >= bound for group in groups):
            aged = _aged(groups, starts, now, bound)
            for entry in heapq.merge(*aged):
                yield entry[2]
            live: Sequence[int] = [k for k, group in enumerate(groups)
                                   if starts[k] < len(group)]
            heads = [groups[k][starts[k]][2] for k in live]
        else:
            live = range(len(groups))
            heads = [group[0][2] for group in groups]
        rank = ctx.rank or ctx.estimate
        exact: Sequence[bool]
        if self._floors is not None:
            ranks, exact = self._floors(heads)
        else:
            ranks = ctx.ranks(heads) if ctx.ranks is not None else [rank(j) for j in heads]
            exact = [True] * len(heads)
        heap: list[tuple[float, float, str, int, float]] = []
        unranked: list[list[_Entry]] = []
        for k, j, est, known in zip(live, heads, ranks, exact, strict=True):
            if est is None:
                unranked.append(groups[k][starts[k]:])
                continue
            e = est if est > 1.0 else 1.0
            wait = now - j.submit_time
            value = -((wait if wait > 0.0 else 0.0) + e) / e
            if not known:
                value *= _ABOVE
                e = 0.0  # marks the entry's ratio as one from a floor
            if value != value:
                # NaN: ``order`` sorts by a key that NaN leaves unordered, so
                # its answer depends on the jobs' order as given: as added.
                everyone = [entry[2] for _, entry in self._place.values()]
                yield from self._order.order(everyone, ctx)[sum(starts):]
                return
            heap.append((value, j.submit_time, j.id, k, e))
        heapq.heapify(heap)
        yield from _merge(heap, groups, starts, now, rank)
        for entry in heapq.merge(*unranked):
            yield entry[2]


def _aged(groups: list[list[_Entry]], starts: list[int], now: float, bound: float
          ) -> list[list[_Entry]]:
    """Each group's jobs past the bound (``starts``: where the rest begin)."""
    aged: list[list[_Entry]] = []
    for k, group in enumerate(groups):
        i = 0
        while i < len(group) and now - group[i][0] >= bound:
            i += 1
        if i:
            starts[k] = i
            aged.append(group[:i])
    return aged


def _merge(heap: list[tuple[float, float, str, int, float]], groups: list[list[_Entry]],
           starts: list[int], now: float, rank: Callable[[Job], float | None]
           ) -> Iterator[Job]:
    """Pop the highest ratio (then the earliest job), put the next job of
    its group in its place; a ratio from a floor (``e`` 0.0) is replaced by
    the head's exact one."""
    while heap:
        top = heap[0]
        k, e = top[3], top[4]
        group = groups[k]
        i = starts[k]
        if not e:
            j = group[i][2]
            est = rank(j)
            assert est is not None  # a floor is given only for a rank
            e = est if est > 1.0 else 1.0
            wait = now - j.submit_time
            heapq.heapreplace(heap, (-((wait if wait > 0.0 else 0.0) + e) / e,
                                     j.submit_time, j.id, k, e))
            continue
        yield group[i][2]
        i = starts[k] = i + 1
        if i == len(group):
            heapq.heappop(heap)
            continue
        j = group[i][2]
        wait = now - j.submit_time
        heapq.heapreplace(heap, (-((wait if wait > 0.0 else 0.0) + e) / e,
                                 j.submit_time, j.id, k, e))
