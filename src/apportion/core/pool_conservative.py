"""Conservative backfilling on the counted pool (``poolsim.PoolCluster``).

Every waiting job, in policy order, gets the earliest window of the idle
nodes' profile (``CountProfile``) that holds it, and takes it: those that
fit now start. A pass that follows one where nothing started or ended since
goes on from where that one left off (``ConservativePass._resume``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from itertools import chain
from typing import TYPE_CHECKING, Any

from apportion.core.countprofile import CountProfile
from apportion.core.scheduling.jobs import Job

if TYPE_CHECKING:
    from apportion.core.poolsim import PoolCluster

__all__ = ["ASK", "ConservativePass"]

ASK = object()
"""An entry's estimate not known yet (``PoolCluster._entries``)."""

_Seq = list[tuple[str, float | None]]


class ConservativePass:
    """A pool's conservative passes, with what the last one left behind."""

    __slots__ = ("_kept", "_releases")

    def __init__(self) -> None:
        self._kept: tuple[int, _Seq, CountProfile, int] | None = None
        """After a pass: (the pool's ``_changes`` as it ended, each job it
        went over and did not start with the reservation it planned or None,
        the profile it left, how many it reserved), for ``_resume``."""
        self._releases: tuple[int, list[float], list[int]] | None = None
        """(``_changes``, distinct expected ends, idle nodes after each) for
        ``CountProfile.summed``."""

    def run(self, pool: PoolCluster, now: float) -> list[Job]:
        """The jobs of ``pool`` that start at ``now``; the reservations it
        plans go to ``pool.reserved``, less those a resumed pass keeps."""
        started: list[Job] = []
        if pool.free < pool.least:
            return started
        entries, resumed = self._resume(pool, pool._entries(now), now)
        seq: _Seq
        if resumed is None:
            profile, reserved, seq = self._profile(pool, now), 0, []
            # Jobs past their estimate count as ended in the profile but
            # still hold their nodes: a job the nodes refuse now is asked
            # for a later step, and a start later in the pass adds steps
            # (its end) that can answer it sooner. Such a pass is not kept.
            keep = profile.free[0] <= pool.free
        else:
            profile, reserved, seq = resumed
            keep = True  # a kept pass had none, and none fell due since
        # Read once: this loop runs for every waiting job at every event.
        place, estimate, pending = profile.place, pool.estimate, pool.pending
        reserved_list = pool.reserved
        depth = pool.config.reservation_depth
        deep = False  # the reservations reached their depth: a start now or nothing
        free = pool.free  # only the starts below change it
        # An entry's (id, estimate, task count) read from the front
        # (``PoolCluster._at``), where 3.11 specializes the subscript.
        ii = pool._at
        ei, ci = ii + 1, ii + 2
        # The job placed last bounds the answer of one that asks for as many
        # nodes or more, as long or longer: each window before its answer
        # holds a step short of its nodes (and the profile only loses nodes
        # during a pass), or is now with too few idle nodes (they only
        # fall), so the scan may begin at that answer.
        last_need = 0
        last_est: float | None = None
        last_t: float | None = None
        for entry in entries:
            job_id, est, need = entry[ii], entry[ei], entry[ci]
            if est is ASK:
                est = estimate(pending[job_id])
            if depth is not None:
                deep = reserved >= depth
            after = (last_t if last_t is not None and need >= last_need
                     and (est is None or (last_est is not None and est >= last_est)) else None)
            t = place(need, est, free, deep, after)
            # A negative estimate's window ends before it starts: its answer
            # bounds nothing (``CountProfile.place`` as first written).
            last_need, last_est = need, est
            last_t = t if est is None or est >= 0 else None
            if t is None:
                seq.append((job_id, None))
            elif t <= now:
                pool._begin(pending[job_id], need, now, started)
                free = pool.free
                if free < pool.least:
                    break  # later reservations could only hold the rest back
            else:
                planned = (job_id, t)
                reserved_list.append(planned)
                reserved += 1
                seq.append(planned)
        # The profile as left (started jobs included) is what the next pass
        # would build again while nothing starts or ends meanwhile: kept
        # with the jobs it went over, their answers and what ``_begin`` made
        # of ``_changes``. Not one that reserved a window holding no step:
        # a later placement's end can give that one an earlier answer.
        keep = keep and not profile.stepless
        self._kept = (pool._changes, seq, profile, reserved) if keep else None
        return started

    def _resume(self, pool: PoolCluster, entries: Iterator[tuple[Any, ...]], now: float
                ) -> tuple[Iterator[tuple[Any, ...]],
                           tuple[CountProfile, int, _Seq] | None]:
        """Where the last pass left off, when nothing started or ended since it,
        no planned end or step fell due (in it or since: ``run`` keeps no pass
        that met a job past its estimate, nor one that reserved a window holding
        no step: ``CountProfile.stepless``), and the queue begins with the jobs
        it went over and did not start, in the same order: each of them gets the
        same answer again (a window that failed from the first step still holds
        the step that failed it; every later step is unchanged), so only the
        jobs after them are asked. The jobs the pass started hold in its profile
        the windows their ends give a fresh one, and an answer it gave before
        one of them was placed stands with it placed (that window still fits:
        the profile it left is nowhere negative); the proof is
        ``tests/core/test_poolsim.py``'s resumed against fresh passes.
        ``entries`` (``_entries``) come back with what was read of them put back
        when the pass cannot resume."""
        kept, self._kept = self._kept, None
        if kept is None or kept[0] != pool._changes:
            return entries, None
        _, seq, profile, reserved = kept
        times = profile.times
        if len(times) > 1 and not times[1] > now:
            return entries, None
        taken: list[tuple[Any, ...]] = []
        ii = pool._at
        for job_id, _ in seq:
            entry = next(entries, None)
            if entry is None:
                return iter(taken), None
            taken.append(entry)
            if entry[ii] != job_id:
                return chain(taken, entries), None
        times[0] = now
        # Their reservations stand as the last pass recorded them: the
        # estimate audit would read each again to find no move, so
        # ``pool.reserved`` takes only those made from here on.
        return entries, (profile, reserved, seq)

    def _profile(self, pool: PoolCluster, now: float) -> CountProfile:
        # The running jobs' releases summed once per change to them: between
        # changes a conservative cycle only moves ``now`` over them.
        summed = self._releases
        if summed is None or summed[0] != pool._changes:
            # ``summed_releases`` over the running jobs' ends, which come
            # sorted by end, written out: a fresh pass follows most finishes.
            running = pool.running
            instants: list[float] = []
            cumulative: list[int] = []
            current, last = pool.free, -math.inf
            for end, job_id in pool.ends:
                current += running[job_id][1]
                if end <= last:
                    cumulative[-1] = current
                else:
                    instants.append(end)
                    cumulative.append(current)
                    last = end
            summed = self._releases = (pool._changes, instants, cumulative)
        return CountProfile.summed(now, pool.free, summed[1], summed[2])
