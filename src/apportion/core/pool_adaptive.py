"""The ``adaptive`` order of a counted pool's queue with backfilling, as
entries (``poolsim.PoolCluster._entries``).

A backfill pass reads the whole queue in ``AdaptiveOrder.order``'s order
and asks for the estimate of each job it weighs. Both answers are one
signature's (``RuntimeHistory.answers``: (estimate, rank), kept until the
next ``record``), so the queue is kept here in submit order with each job's
signature number, and one pass over it gives the ratios, the order and the
estimates: not a sort by submit order, a ``ranks`` call, and an
``estimate`` call per job the pass weighs, at every event. A replay with
backfilling asks this about ten waiting jobs at each of some 40,000 events
on KTH-SP2 (``bench/README.md``, h27-adaptive).

``tests/core/test_pool_adaptive.py`` holds the entries to
``AdaptiveOrder.order_at`` and the history's own answers.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Callable

from apportion.core import fastreplay
from apportion.core.scheduling.adaptive import RuntimeHistory
from apportion.core.scheduling.jobs import Job

__all__ = ["LearnedQueue"]

_Entry = tuple[float, str, int, int, Job]
"""(submit time, job id, signature number, task count, job): a job's place in
submit order (ids are unique, so nothing after the id is ever compared)."""

Entries = list[tuple[str, float | None, int]]
"""(job id, estimate, task count) in policy order, as ``_entries`` gives them."""

_Answer = tuple[float | None, float | None]
_hrrn_ranked = fastreplay.hrrn_ranked
"""``_replay_c.hrrn_ranked``, ``_rated`` compiled (the same entries and
floats), or None: ``_rated``. Every backfill pass of the replay calls it."""


class LearnedQueue:
    """Waiting jobs in submit order with their signature numbers, for the
    ``hrrn`` order of a history that plans with its own estimates."""

    __slots__ = ("_fifo", "_history", "_numbering", "_place")

    def __init__(self, history: RuntimeHistory) -> None:
        self._history = history
        self._fifo: list[_Entry] = []
        self._place: dict[str, _Entry] = {}
        self._numbering = history.numbering

    def __len__(self) -> int:
        return len(self._fifo)

    def add(self, job: Job) -> None:
        fifo = self._fifo
        entry = (job.submit_time, job.id, self._history.number(job), job.task_count, job)
        if not fifo or entry > fifo[-1]:
            fifo.append(entry)  # jobs mostly arrive in submit order
        else:
            insort(fifo, entry)
        self._place[job.id] = entry

    def remove(self, job: Job) -> None:
        entry = self._place.pop(job.id)
        fifo = self._fifo
        at = bisect_left(fifo, entry)
        if at == len(fifo) or fifo[at] is not entry:
            # A NaN submit time compares false both ways: the bisection
            # may land anywhere, so look for the entry itself.
            at = fifo.index(entry)
        del fifo[at]

    def entries(self, now: float, bound: float) -> Entries | None:
        """The queue as ``AdaptiveOrder("hrrn").order_at(jobs, now, bound,
        history.rank, history.ranks)`` orders it, each job with its
        ``history.estimate``; None where a ratio is NaN (that order then
        depends on the order the jobs are given in: the caller's to ask)."""
        history = self._history
        if history.numbering != self._numbering:
            self._renumber()
        answers, answer = history.answers, history.answer
        fifo = self._fifo
        n = len(fifo)
        cut = 0
        while cut < n and now - fifo[cut][0] >= bound:
            cut += 1
        out: Entries = []
        for _, job_id, number, need, _ in fifo[:cut]:  # past the bound: submit order
            out.append((job_id, (answers.get(number) or answer(number))[0], need))
        ranked = self._ranked(now, fifo[cut:] if cut else fifo)
        if ranked is None:
            return None
        out.extend(ranked[0])
        out.extend(ranked[1])
        return out

    def head(self, now: float, bound: float) -> tuple[str, int] | None:
        """(job id, task count) of the first job in policy order, without
        sorting the rest (a cycle that can start nothing plans the head
        alone); None where the queue is empty, or where a ratio is NaN and
        no job is past the bound (``entries`` is None: the caller's to ask)."""
        history = self._history
        if history.numbering != self._numbering:
            self._renumber()
        fifo = self._fifo
        if not fifo:
            return None
        if now - fifo[0][0] >= bound:
            return fifo[0][1], fifo[0][3]  # past the bound: the first in submit order
        # ``_ranked``'s first, without its lists: a blocked cycle's queue is
        # long (the lists cost about 4 % of the easy row's instructions).
        answers, answer = history.answers, history.answer
        best = 0.0
        first: _Entry | None = None
        unranked: _Entry | None = None
        for entry in fifo:
            est = (answers.get(entry[2]) or answer(entry[2]))[1]
            if est is None:
                if unranked is None:
                    unranked = entry
                continue
            e = est if est > 1.0 else 1.0
            wait = now - entry[0]
            value = -((wait if wait > 0.0 else 0.0) + e) / e
            if value != value:
                return None
            if first is None or value < best:  # the first lowest: a stable sort's first
                first, best = entry, value
        chosen = first if first is not None else unranked
        assert chosen is not None
        return chosen[1], chosen[3]

    def _ranked(self, now: float, fifo: list[_Entry]) -> tuple[Entries, Entries] | None:
        """The jobs of ``fifo`` (none past the bound) with a rank, highest
        ratio first, and those without one in submit order; None where a
        ratio is NaN."""
        answers, answer = self._history.answers, self._history.answer
        if _hrrn_ranked is not None:
            ranked, unranked, values = _hrrn_ranked(now, fifo, answers, answer)
        else:
            ranked, unranked, values = _rated(now, fifo, answers, answer)
        # Every value is -1 or below, so the sum is NaN only where one is.
        total = sum(values)
        if total != total:
            return None
        order = sorted(range(len(values)), key=values.__getitem__)
        return list(map(ranked.__getitem__, order)), unranked

    def _renumber(self) -> None:
        """Signatures numbered afresh (the history swept its caches): every
        job's number in the history's new numbering, in one batch, which
        never sweeps partway."""
        history = self._history
        fifo = self._fifo
        numbers = history.numbers([entry[4] for entry in fifo])
        self._numbering = history.numbering
        self._fifo = [(s, i, number, need, job)
                      for (s, i, _, need, job), number in zip(fifo, numbers, strict=True)]
        self._place = {entry[1]: entry for entry in self._fifo}


def _rated(now: float, fifo: list[_Entry], answers: dict[int, _Answer],
           answer: Callable[[int], _Answer]) -> tuple[Entries, Entries, list[float]]:
    """The entries of ``fifo``'s jobs with a rank and each one's value (the
    ratio negated), in submit order, and those of the jobs without one."""
    ranked: Entries = []
    unranked: Entries = []
    values: list[float] = []
    for submit, job_id, number, need, _ in fifo:
        found = answers.get(number) or answer(number)
        est = found[1]
        if est is None:
            unranked.append((job_id, found[0], need))
            continue
        ranked.append((job_id, found[0], need))
        # ``AdaptiveOrder.order_at``'s value, term for term.
        e = est if est > 1.0 else 1.0
        wait = now - submit
        values.append(-((wait if wait > 0.0 else 0.0) + e) / e)
    return ranked, unranked, values
