"""The counted pool's EASY pass behind the head (``PoolCluster._backfill``)
against the plain loop it was first written as: the same jobs start, in the
same order, and the same answer comes back, for static orders (entries with
their sort key in front) and the others (entries asked of the policy)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from apportion.core import poolsim
from apportion.core.scheduling import SchedulerConfig, TaskSpec
from apportion.core.scheduling.jobs import Job

CPU = 1000


def reference_backfill(pool: poolsim.PoolCluster, it: Any, now: float, at: float,
                       extra: int, started: list[Job]) -> bool:
    """The pass as first written: the idle count and the fewest nodes asked
    for checked before every job, each entry read from its end."""
    pending = pool.pending
    free, least = pool.free, pool.least
    count = len(started)
    for entry in it:
        if free < least:
            return False
        need = entry[-1]
        if need > free:
            continue
        est = entry[-2]
        if est is poolsim.ASK:
            est = pool.estimate(pending[entry[-3]])
        if est is not None and now + est <= at:
            pool._begin(pending[entry[-3]], need, now, started)
        elif need <= extra:
            pool._begin(pending[entry[-3]], need, now, started)
            extra -= need
        else:
            continue
        free, least = pool.free, pool.least
    return len(started) == count


waiting = st.lists(st.tuples(st.integers(1, 9),  # nodes asked for (9: more than the pool)
                             st.sampled_from([None, 5.0, 10.0, 30.0, 100.0]),  # estimate
                             st.sampled_from([0.0, 1.0, 2.0]),  # submit time
                             st.integers(0, 2)),  # priority
                   max_size=14)


def pool_with(strategy: str, size: int, jobs: list[tuple[int, float | None, float, int]],
              idle: int) -> poolsim.PoolCluster:
    pool = poolsim.PoolCluster("cpu", CPU, size, SchedulerConfig(strategy=strategy), {}, None)
    for k, (n, est, submit, prio) in enumerate(jobs):
        pool.arrive(Job(f"j{k:02d}", (TaskSpec({"cpu": CPU}, n),), gang=n > 1,
                        submit_time=submit, runtime_estimate=est, priority=prio))
    pool.free = idle
    return pool


@given(st.sampled_from(("fifo", "sjf", "priority", "fairshare")), waiting, st.integers(0, 8),
       st.sampled_from([0.0, 3.0]), st.sampled_from([5.0, 12.0, 40.0]), st.integers(0, 8),
       st.integers(0, 3))
def test_the_pass_starts_what_the_plain_loop_starts(
    strategy: str, jobs: list[tuple[int, float | None, float, int]], idle: int, now: float,
    at: float, extra: int, skip: int,
) -> None:
    size = 8
    fast, plain = pool_with(strategy, size, jobs, idle), pool_with(strategy, size, jobs, idle)
    # The pass begins behind a head (and, resumed, further on): drop a few.
    fast_it, plain_it = fast._entries(now), plain._entries(now)
    for _ in range(skip):
        next(fast_it, None)
        next(plain_it, None)
    started_fast: list[Job] = []
    started_plain: list[Job] = []
    assert fast._backfill(fast_it, now, at, extra, started_fast) == reference_backfill(
        plain, plain_it, now, at, extra, started_plain)
    assert [j.id for j in started_fast] == [j.id for j in started_plain]
    assert (fast.free, fast.least, fast._needs) == (plain.free, plain.least, plain._needs)
    assert list(fast.ends) == list(plain.ends)


@given(waiting, st.lists(st.integers(0, 13), max_size=14))
def test_the_fewest_nodes_asked_for_follow_the_starts(
    jobs: list[tuple[int, float | None, float, int]], picks: list[int],
) -> None:
    # ``least`` after each start against the least need of the jobs left.
    size = 8
    pool = pool_with("fifo", size, jobs, size * len(jobs))
    left = dict(pool.pending)
    started: list[Job] = []
    for pick in picks:
        if not left:
            break
        job = list(left.values())[pick % len(left)]
        del left[job.id]
        pool._begin(job, min(job.task_count, size + 1), 0.0, started)
        assert pool.least == min((min(j.task_count, size + 1) for j in left.values()),
                                 default=size + 1)
