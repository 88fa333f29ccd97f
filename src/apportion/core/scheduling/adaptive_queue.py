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
sort of the queue (``bench/bench_simulate.py``: the adaptive rows).

Only the ``hrrn`` order is merged (``sjf`` and a rank that makes a ratio
NaN take ``AdaptiveOrder.order`` on the whole queue);
``tests/core/test_sched_adaptive_queue.py`` holds the merge to
``AdaptiveOrder.order`` on generated queues.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort
from collections.abc import Hashable, Iterator, Sequence
from typing import TYPE_CHECKING

from apportion.core.scheduling.adaptive import AdaptiveOrder, RuntimeHistory
from apportion.core.scheduling.jobs import Job

INF = float("inf")

if TYPE_CHECKING:
    from apportion.core.scheduling.policies import OrderContext

_Entry = tuple[float, str, Job]
"""(submit time, job id, job): a job's place in submit order (ids are unique,
so the job itself is never compared)."""


class _Group:
    """The waiting jobs of one signature in submit order, and their rank as
    of the history's ``epoch`` (a cycle with no job learned since the last
    one asks for no rank again)."""

    __slots__ = ("entries", "epoch", "rank")

    def __init__(self, entry: _Entry) -> None:
        # A plain list: jobs arrive in submit order and mostly leave from
        # the front, and a group holds a few (``SortedList`` cost more to
        # walk and to keep than it saved).
        self.entries = [entry]
        self.epoch = -1
        self.rank: float | None = None


class AdaptiveQueue:
    """Waiting jobs grouped by signature, for ``AdaptiveOrder("hrrn")`` with
    ranks from ``history`` (the ``rank`` an ``OrderContext`` passed to
    ``ordered`` carries must be ``history.rank``)."""

    def __init__(self, order: AdaptiveOrder, history: RuntimeHistory) -> None:
        if order.by != "hrrn":
            raise ValueError("AdaptiveQueue merges the hrrn order only")
        self._order = order
        self._history = history
        self._groups: dict[Hashable, _Group] = {}
        self._place: dict[str, tuple[Hashable, _Entry]] = {}

    def __len__(self) -> int:
        return len(self._place)

    def add(self, job: Job) -> None:
        sig = self._history.signature(job)
        entry = (job.submit_time, job.id, job)
        group = self._groups.get(sig)
        if group is None:
            self._groups[sig] = _Group(entry)
        elif entry > group.entries[-1]:
            group.entries.append(entry)
        else:
            insort(group.entries, entry)
        self._place[job.id] = (sig, entry)

    def remove(self, job: Job) -> None:
        sig, entry = self._place.pop(job.id)
        entries = self._groups[sig].entries
        if entries[0] is entry:
            del entries[0]
        else:
            del entries[bisect_left(entries, entry)]
        if not entries:
            del self._groups[sig]

    def ordered(self, ctx: OrderContext) -> Iterator[Job]:
        """The waiting jobs in ``AdaptiveOrder.order``'s order, as asked for."""
        now, bound = ctx.now, ctx.aging_bound
        groups = [group.entries for group in self._groups.values()]
        # In each group the jobs past the bound are a prefix: they lead, in
        # submit order; the rest of each group is merged by ratio.
        starts = [0] * len(groups)
        live: Sequence[int] = range(len(groups))
        if bound != INF and any(now - entries[0][0] >= bound for entries in groups):
            for entry in heapq.merge(*_aged(groups, starts, now, bound)):
                yield entry[2]
            live = [k for k, entries in enumerate(groups) if starts[k] < len(entries)]
        ranks = self._ranks(live, starts)
        heap: list[tuple[float, float, str, int, float]] = []
        unranked: list[list[_Entry]] = []
        for k, est in zip(live, ranks, strict=True):
            entries = groups[k]
            if est is None:
                unranked.append(entries[starts[k]:])
                continue
            j = entries[starts[k]][2]
            e = est if est > 1.0 else 1.0
            wait = now - j.submit_time
            value = -((wait if wait > 0.0 else 0.0) + e) / e
            if value != value:
                # NaN: ``order`` sorts by a key that NaN leaves unordered, so
                # its answer depends on the jobs' order as given: as added.
                everyone = [entry[2] for _, entry in self._place.values()]
                yield from self._order.order(everyone, ctx)[sum(starts):]
                return
            heap.append((value, j.submit_time, j.id, k, e))
        heapq.heapify(heap)
        yield from _merge(heap, groups, starts, now)
        for entry in heapq.merge(*unranked):
            yield entry[2]

    def _ranks(self, live: Sequence[int], starts: list[int]) -> list[float | None]:
        """The rank of each live group (``starts``: its first job short of
        the bound), asking the history only for those it may have changed."""
        history = self._history
        epoch = history.epoch
        groups = list(self._groups.values())
        stale = [k for k in live if groups[k].epoch != epoch]
        if stale:
            asked = history.ranks([groups[k].entries[starts[k]][2] for k in stale])
            for k, rank in zip(stale, asked, strict=True):
                group = groups[k]
                group.rank = rank
                group.epoch = epoch
        return [groups[k].rank for k in live]


def _aged(groups: list[list[_Entry]], starts: list[int], now: float, bound: float
          ) -> list[list[_Entry]]:
    """Each group's jobs past the bound (``starts``: where the rest begin)."""
    aged: list[list[_Entry]] = []
    for k, entries in enumerate(groups):
        i = 0
        while i < len(entries) and now - entries[i][0] >= bound:
            i += 1
        if i:
            starts[k] = i
            aged.append(entries[:i])
    return aged


def _merge(heap: list[tuple[float, float, str, int, float]], groups: list[list[_Entry]],
           starts: list[int], now: float) -> Iterator[Job]:
    """Pop the highest ratio (then the earliest job), put the next job of
    its group in its place."""
    while heap:
        top = heap[0]
        k, e = top[3], top[4]
        entries = groups[k]
        i = starts[k]
        yield entries[i][2]
        i = starts[k] = i + 1
        if i == len(entries):
            heapq.heappop(heap)
            continue
        j = entries[i][2]
        wait = now - j.submit_time
        heapq.heapreplace(heap, (-((wait if wait > 0.0 else 0.0) + e) / e,
                                 j.submit_time, j.id, k, e))
