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

Given the history itself (``Learner``), the queue keeps each group's rank,
exact or floor, from one event to the next (``_Kept``): an exact rank stands
until the next record, a floor until the record that moves the one typical
value it was read from (or the levels' standing). A cycle then asks the
history only about the groups an event touched, and takes the ratios of
the heads in one pass over flat lists (``bench/README.md``, tenth session).

Only the ``hrrn`` order is merged (``sjf`` and a rank that makes a ratio
NaN take ``AdaptiveOrder.order`` on the whole queue);
``tests/core/test_sched_adaptive_queue.py`` holds the merge to
``AdaptiveOrder.order`` on generated queues.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol, TypeVar

from apportion.core import fastreplay
from apportion.core.scheduling.adaptive_order import AdaptiveOrder
from apportion.core.scheduling.jobs import Job

INF = float("inf")

_ABOVE = 1.0 + 2.0**-40
"""Widens a ratio from a floor past its float rounding (a few 1e-16)."""

Floors = Callable[[Sequence[Job]], tuple[list[float | None], list[bool]]]

if TYPE_CHECKING:
    from apportion.core.scheduling.policies import OrderContext

_hrrn_values = fastreplay.hrrn_values
"""``_replay_c.hrrn_values``, ``_Kept.plain``'s values on C doubles (the
same floats; False where they are Python's to compute), or None: the
comprehension below. A cycle of the KTH replay takes ~24 groups' values,
and the interpreted loop was a fifth of it."""
_hrrn_top = fastreplay.hrrn_top
"""``_replay_c.hrrn_top``, ``min``/``index``/``count`` of ``_Kept.merge``'s
values in one C pass (~235,000 turns a KTH replay), or None."""

_Entry = tuple[float, str, Job]
"""(submit time, job id, job): a job's place in submit order (ids are unique,
so the job itself is never compared)."""


class Learner(Protocol):
    """What a queue that keeps its groups' ranks across events asks of the
    history (``RuntimeHistory``)."""

    learned: int
    floors_reset: bool
    numbering: int

    def signature(self, job: Job) -> Hashable: ...

    def floors(self, jobs: Sequence[Job]) -> tuple[list[float | None], list[bool]]: ...

    def number(self, job: Job) -> int: ...

    def numbers(self, jobs: Iterable[Job]) -> list[int]: ...

    def stale_floors(self) -> list[int] | None: ...

    answers: dict[int, tuple[float | None, float | None]]

    def answer(self, number: int) -> tuple[float | None, float | None]: ...


class AdaptiveQueue:
    """Waiting jobs grouped by signature, for ``AdaptiveOrder("hrrn")``."""

    def __init__(self, order: AdaptiveOrder, signature: Callable[[Job], Hashable],
                 floors: Floors | None = None, learner: Learner | None = None) -> None:
        """``floors``: from the history that answers the contexts' ranks;
        ``learner``: that history, for a queue that keeps each group's rank
        (exact or floor) across events (``_Kept``)."""
        if order.by != "hrrn":
            raise ValueError("AdaptiveQueue merges the hrrn order only")
        self._order = order
        self._signature = signature
        self._floors = floors
        self._kept = None if learner is None else _Kept(learner)
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
        kept = self._kept
        if group is None:
            group = self._groups[sig] = [entry]
            if kept is not None:
                kept.open(sig, group, job)
        elif entry > group[-1]:
            group.append(entry)
        else:
            insort(group, entry)
            if kept is not None and group[0] is entry:
                kept.heads[kept.index[sig]] = job.submit_time
        self._place[job.id] = (sig, entry)

    def remove(self, job: Job) -> None:
        sig, entry = self._place.pop(job.id)
        group = self._groups[sig]
        kept = self._kept
        if group[0] is entry:
            del group[0]
            if kept is not None and group:
                kept.heads[kept.index[sig]] = group[0][0]
        else:
            del group[bisect_left(group, entry)]
        if not group:
            del self._groups[sig]
            if kept is not None:
                kept.close(sig)

    def ordered(self, ctx: OrderContext) -> Iterator[Job]:
        """The waiting jobs in ``AdaptiveOrder.order``'s order, as asked for."""
        return self.ordered_at(ctx.now, ctx.aging_bound, ctx.rank or ctx.estimate, ctx.ranks)

    def ordered_at(self, now: float, bound: float, rank: Callable[[Job], float | None],
                   ranks: Callable[[Sequence[Job]], list[float | None]] | None = None
                   ) -> Iterator[Job]:
        """``ordered`` with the context's parts, as ``AdaptiveOrder.order_at``."""
        kept = self._kept
        if kept is not None and bound == INF:
            kept.update()
            if kept.heads and kept.plain(now):
                return kept.merge(now)
        return self._ordered(now, bound, rank, ranks)

    def _ordered(self, now: float, bound: float, rank: Callable[[Job], float | None],
                 ranks_of: Callable[[Sequence[Job]], list[float | None]] | None
                 ) -> Iterator[Job]:
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
        exact: Sequence[bool]
        if self._floors is not None:
            ranks, exact = self._floors(heads)
        else:
            ranks = ranks_of(heads) if ranks_of is not None else [rank(j) for j in heads]
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
                yield from self._order.order_at(everyone, now, bound, rank,
                                                ranks_of)[sum(starts):]
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


_T = TypeVar("_T")


def _into(column: list[_T], k: int) -> None:
    """The last item of ``column`` in place of item ``k``."""
    column[k] = column[-1]
    column.pop()


class _Kept:
    """Each group's rank kept across events, in lists by group (``k``):
    ``heads`` the head's submit time, ``es`` the rank a ratio is taken from
    (exact or a floor, at least 1.0), ``signs`` what the ratio is multiplied
    by (-1.0 for an exact rank, ``-_ABOVE`` for a floor, INF where the rank
    is None). An exact rank stands until the next record (``learned``), a
    floor until the history drops it (``stale_floors``): so a cycle asks
    the history only about the groups whose rank an event moved, and finds
    the first job with a few calls in C over the lists instead of a heap
    built of every head. ``tests/core/test_sched_adaptive_queue.py`` holds
    the kept ranks to fresh ones and the merge to ``AdaptiveOrder.order``."""

    def __init__(self, learner: Learner) -> None:
        self.learner = learner
        self.index: dict[Hashable, int] = {}
        self.sigs: list[Hashable] = []
        self.groups: list[list[_Entry]] = []
        self.heads: list[float] = []
        self.es: list[float] = []
        self.signs: list[float] = []
        self.floor_es: list[float] = []
        """Per group its floor's ``es`` while the history keeps it, else -1.0."""
        self.numbers: list[int] = []
        self.by_number: dict[int, Hashable] = {}
        self.exact: set[Hashable] = set()
        """Groups whose ``es`` is exact (or None) as of ``learned``."""
        self.todo: set[Hashable] = set()
        """Groups whose rank is to be asked for."""
        self.learned = -1
        self.numbering = learner.numbering
        self.values: list[float] = []
        """The groups' values in the cycle under way (``plain``)."""

    def open(self, sig: Hashable, group: list[_Entry], job: Job) -> None:
        self.index[sig] = len(self.sigs)
        self.sigs.append(sig)
        self.groups.append(group)
        self.heads.append(job.submit_time)
        self.es.append(1.0)
        self.signs.append(-1.0)
        self.floor_es.append(-1.0)
        number = self.learner.number(job)
        self.numbers.append(number)
        self.by_number[number] = sig
        self.todo.add(sig)

    def close(self, sig: Hashable) -> None:
        """Drop an empty group: the last one takes its place in the lists."""
        k = self.index.pop(sig)
        self.exact.discard(sig)
        self.todo.discard(sig)
        if self.by_number.get(self.numbers[k]) == sig:
            del self.by_number[self.numbers[k]]
        last = len(self.sigs) - 1
        _into(self.sigs, k)
        _into(self.groups, k)
        _into(self.heads, k)
        _into(self.es, k)
        _into(self.signs, k)
        _into(self.floor_es, k)
        _into(self.numbers, k)
        if k != last:
            self.index[self.sigs[k]] = k

    def update(self) -> None:
        """Take the history's changes since the last cycle, and ask it for
        the ranks of the groups they touched."""
        learner, index, exact, todo = self.learner, self.index, self.exact, self.todo
        if learner.learned == self.learned and not learner.floors_reset:
            # No record since: no floor dropped, no exact rank moved (the
            # levels' table, and so the floors' basis, moves only with one).
            if todo:
                self._ask()
            return
        stale = learner.stale_floors()
        if stale is None:  # every floor, and perhaps every number
            if learner.numbering != self.numbering:
                self.numbering = learner.numbering
                # In one numbering (``number`` may sweep before a job it
                # has not seen, which would leave earlier numbers stale).
                self.numbers = learner.numbers([group[0][2] for group in self.groups])
                self.by_number = dict(zip(self.numbers, self.sigs, strict=True))
            self.floor_es = [-1.0] * len(self.sigs)
            todo.update(self.sigs)
            exact.clear()
        else:
            by_number, floor_es = self.by_number, self.floor_es
            for number in stale:
                sig = by_number.get(number)
                if sig is not None:
                    floor_es[index[sig]] = -1.0
                    if sig not in exact:
                        todo.add(sig)
        if learner.learned != self.learned:
            self.learned = learner.learned
            es, signs, floor_es = self.es, self.signs, self.floor_es
            for sig in exact:  # exact ranks fall back to their floors
                k = index[sig]
                if floor_es[k] < 0.0:
                    todo.add(sig)
                else:
                    es[k], signs[k] = floor_es[k], -_ABOVE
            exact.clear()
        if todo:
            self._ask()

    def _ask(self) -> None:
        index, groups, es, signs = self.index, self.groups, self.es, self.signs
        sigs = list(self.todo)
        self.todo.clear()
        places = [index[sig] for sig in sigs]
        ranks, known = self.learner.floors([groups[k][0][2] for k in places])
        for sig, k, est, is_exact in zip(sigs, places, ranks, known, strict=True):
            if est is None:
                es[k], signs[k] = 1.0, INF  # unranked: after every ranked job
            else:
                es[k] = est if est > 1.0 else 1.0
                if not is_exact:
                    self.floor_es[k], signs[k] = es[k], -_ABOVE
                    continue
                signs[k] = -1.0
            self.exact.add(sig)

    def plain(self, now: float) -> bool:
        """Whether the ratios need no care: no head after ``now`` (a wait
        below zero counts as zero) and none NaN or infinite."""
        if _hrrn_values is not None:
            found = _hrrn_values(now, self.heads, self.es, self.signs)
            if found is None:
                return False
            if found is not False:
                self.values = found
                return True
        if max(self.heads) > now:
            return False
        # -((w + e) / e), times _ABOVE for a floor, as ``ordered`` has it
        # (a negation is exact); INF for a group with no rank.
        values = self.values = [((now - s) + e) / e * sign
                                for s, e, sign in zip(self.heads, self.es, self.signs, strict=True)]
        total = sum(values)
        return total == total and total != -INF

    def merge(self, now: float) -> Iterator[Job]:
        """``AdaptiveQueue._merge`` over ``values`` (from ``plain``): the
        lowest value (then the earliest job) comes first; a floor's is
        replaced by the head's exact one, the learner's rank of the group's
        signature (read by its number: the rank ``ordered_at`` is given is
        the learner's, whose floors these are). Whoever reads the jobs may
        ask the learner about a job it has not seen, which may number the
        signatures afresh (``RuntimeHistory._of``'s sweep), before the
        first job or between two: from then on a head's number is asked
        afresh, not read from ``numbers``."""
        values, groups, es, signs = self.values, self.groups, self.es, self.signs
        learner = self.learner
        numbers, answers, answer = self.numbers, learner.answers, learner.answer
        numbering = self.numbering  # that of ``numbers`` (``update``)
        taken: dict[int, int] = {}
        top = _hrrn_top
        while True:
            k = -3 if top is None else top(values)
            if k < 0:
                if k == -1:
                    break
                v = min(values)
                if v == INF:
                    break
                k = values.index(v)
                if values.count(v) > 1:
                    k = min((groups[i][taken.get(i, 0)][:2], i)
                            for i, x in enumerate(values) if x == v)[1]
            i = taken.get(k, 0)
            j = groups[k][i][2]
            if signs[k] != -1.0:  # a floor: the head's exact rank in its place
                number = (numbers[k] if learner.numbering == numbering
                          else learner.number(j))
                est = (answers.get(number) or answer(number))[1]
                assert est is not None  # a floor is given only for a rank
                e = es[k] = est if est > 1.0 else 1.0
                signs[k] = -1.0
                self.exact.add(self.sigs[k])
                wait = now - j.submit_time
                values[k] = -((wait if wait > 0.0 else 0.0) + e) / e
                continue
            yield j
            i = taken[k] = i + 1
            if i == len(groups[k]):
                values[k] = INF
                continue
            e = es[k]
            wait = now - groups[k][i][0]
            values[k] = -((wait if wait > 0.0 else 0.0) + e) / e
        unranked = [groups[k] for k, sign in enumerate(signs) if sign == INF]
        for entry in heapq.merge(*unranked):
            yield entry[2]
