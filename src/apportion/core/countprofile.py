"""Idle nodes of one counted resource over time, for conservative backfilling
on the counted pool (``poolsim.PoolCluster``)."""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence

from apportion.core import fastreplay
from apportion.core.scheduling.policies import INF

__all__ = ["CountProfile", "summed_releases"]

_count_place = fastreplay.count_place
"""``_replay_c.count_place``, ``place``'s scan compiled (the same start and
changes; False where it cannot scan as Python would), or None: the scan in
Python. A conservative pass asks it of every waiting job at every event
(a sixth of the adaptive+conservative KTH replay)."""

_EXACT_SECONDS = 2.0**52
"""Below this in size an instant's float spacing is under 1: a window of a
second or more always holds its first step (``place``), as ``math.ulp``
would say at a greater cost."""


class CountProfile:
    """``backfill.Profile`` for one counted resource: idle nodes over time.

    The same steps, answers and splits as ``Profile`` with a one-entry
    vector (``tests/core/test_poolsim.py`` compares the two on generated
    steps), on plain ints: a conservative replay asks it about every
    waiting job at every event, and the vectors were most of its cost.
    """

    __slots__ = ("free", "stepless", "times")

    def __init__(self, now: float, free_now: int,
                 releases: Iterable[tuple[float, int]]) -> None:
        """``releases``: (instant, nodes freed), in order of instant."""
        self._fold(now, free_now, *summed_releases(free_now, releases))

    @classmethod
    def summed(cls, now: float, free_now: int, instants: Sequence[float],
               cumulative: Sequence[int]) -> CountProfile:
        """``CountProfile(now, free_now, releases)`` from the releases summed
        ahead: ``instants`` their distinct instants in order, ``cumulative``
        the idle nodes once each has passed (``free_now`` plus every release
        up to it). Those at or before ``now`` fold into the first step."""
        profile = cls.__new__(cls)
        profile._fold(now, free_now, instants, cumulative)
        return profile

    def _fold(self, now: float, free_now: int, instants: Sequence[float],
              cumulative: Sequence[int]) -> None:
        k = bisect_right(instants, now)
        self.stepless = False
        """``place`` reserved a window that holds no step (a duration of 0,
        or one its start absorbs) after the first step: such a window fits
        at any step, so its answer is the first step after now, and a later
        reservation's end can bring it forward (``ConservativePass``
        resumes no pass with one)."""
        self.times = [now, *instants[k:]]
        self.free = [cumulative[k - 1] if k else free_now, *cumulative[k:]]

    def earliest(self, need: int, duration: float | None, later_than: float | None = None,
                 first_only: bool = False) -> float | None:
        """``Profile.earliest`` for ``need`` nodes."""
        times, free = self.times, self.free
        n = len(times)
        i = 0 if later_than is None else bisect_right(times, later_than)
        while i < n:
            end = INF if duration is None else times[i] + duration
            j = i
            while j < n and times[j] < end:
                if free[j] < need:
                    break
                j += 1
            else:
                return times[i]
            if first_only:
                return None
            i = j + 1  # every window starting at or before step j contains it
        return None

    def place(self, need: int, duration: float | None, idle: int,
              first_only: bool = False, after: float | None = None) -> float | None:
        """One waiting job's turn in a conservative pass, in one scan: the
        start ``earliest`` gives, reserved as ``reserve`` reserves it, or
        None. A start at the first step (now) also needs ``idle`` (the nodes
        idle in fact) to cover ``need``: the profile counts jobs past their
        estimate as ended, and when the nodes say no the job is planned at
        the first later step that fits (``earliest(later_than=now)``), or
        not at all with ``first_only``. The pass asks this of every waiting
        job at every event; one scan spares the second search ``reserve``
        made for the window ``earliest`` had just found. ``after``: a step
        no earlier than the answer, known to the caller (no window starting
        before it fits), where the scan may begin."""
        times = self.times
        if duration is not None and not (
                (duration >= 1.0 and times[0] > -_EXACT_SECONDS and times[-1] < _EXACT_SECONDS)
                or duration > math.ulp(max(-times[0], times[-1]))):
            # A window that may not hold its own first step (none, or one
            # that a float addition to an instant absorbs): as first written.
            t = self.earliest(need, duration, first_only=first_only)
            if t is not None and t == self.times[0] and need > idle:
                t = None if first_only else self.earliest(need, duration,
                                                          later_than=self.times[0])
            if t is not None:
                if t > self.times[0] and not (t + duration > t or (t == INF and duration > 0)):
                    self.stepless = True
                self.reserve(t, need, duration)
            return t
        times, free = self.times, self.free
        n = len(times)
        i = 0 if after is None else bisect_left(times, after)
        if _count_place is not None:
            found = _count_place(times, free, need, duration, idle, first_only, i)
            if found is not False:
                return found
        while True:
            # A window fails at its first step mostly (six times in eight on
            # KTH-SP2): pass over such steps before a window is looked at
            # (each window holds its first step: ``duration`` is above the
            # float spacing of every instant).
            while i < n and free[i] < need:
                i += 1
            if i == n or (first_only and i):
                return None
            start = times[i]
            end = INF if duration is None else start + duration
            j = i + 1
            while j < n and times[j] < end:
                if free[j] < need:
                    break
                j += 1
            else:
                if i or need <= idle:
                    # Steps i..j-1 lie in the window and times[j] >= end:
                    # ``reserve``'s two searches, already answered.
                    if duration is not None and (j == n or times[j] != end):
                        times.insert(j, end)
                        free.insert(j, free[j - 1])
                    for k in range(i, j):
                        free[k] -= need
                    return start
                if first_only:
                    return None
                # The nodes say no to now: the steps after now, as ``later_than``.
                i = bisect_right(times, start)
                continue
            if first_only:
                return None
            i = j + 1  # every window starting at or before step j contains it

    def reserve(self, start: float, need: int, duration: float | None) -> None:
        """``Profile.reserve``: take ``need`` nodes from ``start`` for ``duration``."""
        times, free = self.times, self.free
        # ``backfill.split_step`` at both ends, written out: a conservative
        # cycle reserves for every waiting job, and the calls showed.
        a = bisect_left(times, start)
        if a and (a == len(times) or times[a] != start):
            times.insert(a, start)
            free.insert(a, free[a - 1])
        if duration is None:
            b = len(times)
        else:
            end = start + duration
            b = bisect_left(times, end)
            if b and (b == len(times) or times[b] != end):
                times.insert(b, end)
                free.insert(b, free[b - 1])
        for k in range(a, b):
            free[k] -= need


def summed_releases(free_now: int, releases: Iterable[tuple[float, int]]
                    ) -> tuple[list[float], list[int]]:
    """The distinct instants of ``releases`` ((instant, nodes freed), in
    order of instant) and the idle nodes once each has passed: what
    ``CountProfile.summed`` takes."""
    instants: list[float] = []
    cumulative: list[int] = []
    current = free_now
    for t, n in releases:
        current += n
        if instants and t <= instants[-1]:
            cumulative[-1] = current
        else:
            instants.append(t)
            cumulative.append(current)
    return instants, cumulative
