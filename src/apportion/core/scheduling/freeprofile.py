"""Running jobs' expected ends in order (``running_ends``), and the plan
conservative backfilling keeps over them (``Profile``): free capacity summed
over ready nodes, as a step function of time, from those ends and the
reservations made so far.

On a homogeneous pool (every trace replay, where each task takes whole
processors) it is exact; on a mixed fleet it can be optimistic, and the real
placement at start time stays the judge, so nothing is ever oversubscribed.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from sortedcontainers import SortedList

from apportion.core.scheduling.state import ClusterState

INF = float("inf")
_Row = TypeVar("_Row")


def running_ends(state: ClusterState, now: float) -> list[tuple[float, str]]:
    """(expected end, job id) of running jobs with a known end, soonest first.

    Read off the state's index of ``start + estimate``: the jobs past their
    estimate are expected to end ``now`` (ordered by id), the others keep
    their order."""
    ends = state.ends
    cut = _overdue(ends, now)
    out = [(now, job_id) for job_id in sorted(e[1] for e in ends.islice(0, cut))]
    out.extend(ends.islice(cut))
    return out


def _overdue(ends: SortedList, now: float) -> int:
    """How many entries of ``ends`` have ``start + estimate <= now``."""
    return int(ends.bisect_left((math.nextafter(now, INF),)))


class Profile:
    """Free capacity over time, summed over ready nodes, for conservative
    backfilling: step ``k`` starts at ``times[k]`` with free vector
    ``free[k]`` (the last step lasts for ever).

    A cycle asks it once per waiting job, so the steps are plain lists and
    the common case of one resource (every SWF replay) runs on plain ints.
    """

    __slots__ = ("free", "names", "pos", "times")

    def __init__(self, names: Sequence[str], now: float, free_now: Sequence[int],
                 releases: Sequence[tuple[float, Sequence[int]]]) -> None:
        self.names = tuple(names)
        self.pos = {r: i for i, r in enumerate(self.names)}
        self.times: list[float] = [now]
        self.free: list[list[int]] = [list(free_now)]
        current = list(free_now)
        for t, vec in sorted(releases, key=lambda tv: tv[0]):
            current = [a + b for a, b in zip(current, vec, strict=True)]
            if t <= self.times[-1]:
                self.free[-1] = current
            else:
                self.times.append(t)
                self.free.append(current)

    @classmethod
    def of(cls, state: ClusterState, now: float) -> Profile:
        total = state.free_total()
        names = sorted(total)
        pos = {r: i for i, r in enumerate(names)}
        releases = []
        for end, job_id in running_ends(state, now):
            vec = [0] * len(names)
            for r, q in state.running[job_id].job.total.items():
                i = pos.get(r)
                if i is not None:
                    vec[i] = q
            releases.append((end, vec))
        return cls(names, now, [total[r] for r in names], releases)

    def vector(self, request: Mapping[str, int]) -> list[int] | None:
        out = [0] * len(self.names)
        for r, q in request.items():
            i = self.pos.get(r)
            if i is None:
                return None
            out[i] = q
        return out

    def earliest(
        self,
        need: Sequence[int],
        duration: float | None,
        later_than: float | None = None,
        first_only: bool = False,
    ) -> float | None:
        """The first step start (after ``later_than`` when given) from which
        ``need`` stays free for ``duration`` (None: for ever); with
        ``first_only``, only the first candidate step is tried."""
        times, free = self.times, self.free
        n = len(times)
        idx = [i for i, q in enumerate(need) if q]
        single = idx[0] if len(idx) == 1 else -1
        want = need[single] if single >= 0 else 0
        i = 0 if later_than is None else bisect_right(times, later_than)
        while i < n:
            end = INF if duration is None else times[i] + duration
            j = i
            ok = True
            while j < n and times[j] < end:
                row = free[j]
                if (row[single] < want) if single >= 0 else any(row[k] < need[k] for k in idx):
                    ok = False
                    break
                j += 1
            if ok:
                return times[i]
            if first_only:
                return None
            # Every window starting at or before step j contains it: skip past.
            i = j + 1
        return None

    def reserve(self, start: float, need: Sequence[int], duration: float | None) -> None:
        """Take ``need`` from ``start`` for ``duration`` (None: for ever)."""
        a = self._split(start)
        b = len(self.times) if duration is None else self._split(start + duration)
        idx = [i for i, q in enumerate(need) if q]
        free = self.free
        if len(idx) == 1:
            k0, q0 = idx[0], need[idx[0]]
            for k in range(a, b):
                free[k][k0] -= q0
            return
        for k in range(a, b):
            row = free[k]
            for i in idx:
                row[i] -= need[i]

    def _split(self, t: float) -> int:
        return split_step(self.times, self.free, t, list)


def split_step(times: list[float], rows: list[_Row], t: float,
               copy: Callable[[_Row], _Row]) -> int:
    """The index of the step starting at ``t`` in a step function, splitting
    the step that holds ``t`` in two (the new one a ``copy`` of its row);
    0 for a ``t`` before the first step (nothing to split)."""
    k = bisect_left(times, t)
    if k < len(times) and times[k] == t:
        return k
    if k == 0:
        return 0
    times.insert(k, t)
    rows.insert(k, copy(rows[k - 1]))
    return k
