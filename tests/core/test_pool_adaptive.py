"""``LearnedQueue`` (a pool's learning hrrn queue with backfilling, kept in
submit order with signature numbers) gives ``AdaptiveOrder.order_at``'s
order and the history's estimates, on generated queues and histories, as
jobs come and go and the history sweeps its caches."""

from __future__ import annotations

import math
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adaptive_support import Step, steps, take_step
from apportion.core.pool_adaptive import LearnedQueue
from apportion.core.scheduling import adaptive
from apportion.core.scheduling.adaptive import AdaptiveOrder, RuntimeHistory
from apportion.core.scheduling.jobs import Job, job

P = 1000
INF = math.inf


def plain_entries(h: RuntimeHistory, waiting: dict[str, Job], now: float, bound: float
                  ) -> list[tuple[str, float | None, int]]:
    """The order as the pool asked for it before: ``order_at`` on the jobs as
    they arrived, then each job's estimate."""
    ordered = AdaptiveOrder().order_at(list(waiting.values()), now, bound, h.rank, h.ranks)
    return [(j.id, h.estimate(j), j.task_count) for j in ordered]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps, st.sampled_from([INF, 0.0, 20.0, 97.0]), st.sampled_from([100.0, 150.0]),
       st.booleans(), st.booleans())
def test_the_entries_are_the_plain_order_with_estimates_as_jobs_come_and_go(
    drawn: list[Step],
    bound: float, now: float, sweep: bool, plain_first: bool,
) -> None:
    # ``sweep``: the history renumbers its signatures every few new jobs.
    with mock.patch.object(adaptive, "_SLACK", 1 if sweep else adaptive._SLACK):
        h = RuntimeHistory()
        queue = LearnedQueue(h)
        waiting: dict[str, Job] = {}
        for n, step in enumerate(drawn):
            take_step(n, step, h, queue, waiting)
            # Either may fill the answers first: each must read them alike.
            if plain_first:
                plain = plain_entries(h, waiting, now, bound)
                got = queue.entries(now, bound)
            else:
                got = queue.entries(now, bound)
                plain = plain_entries(h, waiting, now, bound)
            assert got == plain
            assert len(queue) == len(waiting)
            head = queue.head(now, bound)
            assert head == (None if not plain else (plain[0][0], plain[0][2]))


@given(st.lists(st.tuples(st.sampled_from([0.0, 10.0, 50.0]),
                          st.sampled_from([None, 0.0, 7.0, 1e6, INF])),
                min_size=1, max_size=10),
       st.sampled_from([INF, 30.0]))
def test_a_ratio_that_is_nan_leaves_the_order_to_the_caller(
        drawn: list[tuple[float, float | None]], bound: float) -> None:
    # With no history a job's rank is its own estimate: an infinite one
    # makes its ratio (wait + inf) / inf, NaN, unless it is past the bound.
    h = RuntimeHistory()
    queue = LearnedQueue(h)
    jobs = [job(f"j{k:02d}", {"cpu": P}, submit_time=t, runtime_estimate=e)
            for k, (t, e) in enumerate(drawn)]
    for j in reversed(jobs):  # not in submit order
        queue.add(j)
    now = 60.0
    nan = any(j.runtime_estimate == INF and now - j.submit_time < bound for j in jobs)
    got = queue.entries(now, bound)
    assert (got is None) == nan
    waiting = {j.id: j for j in reversed(jobs)}
    plain = plain_entries(h, waiting, now, bound)
    if got is not None:
        assert got == plain
    # The head stands where a job is past the bound, whatever the ratios.
    aged = any(now - j.submit_time >= bound for j in jobs)
    head = queue.head(now, bound)
    assert head == (None if got is None and not aged else (plain[0][0], plain[0][2]))


def test_jobs_past_the_bound_lead_in_submit_order_then_the_highest_ratio() -> None:
    h = RuntimeHistory()
    queue = LearnedQueue(h)
    for name, submit, est in (("a", 50.0, 10.0), ("b", 0.0, 1000.0), ("c", 5.0, 10.0),
                              ("d", 40.0, None), ("e", 1.0, 100.0)):
        queue.add(job(name, {"cpu": P}, count=3, submit_time=submit, runtime_estimate=est))
    # At 100 s with a bound of 96 s: b and e are past it (submit order);
    # then c (ratio 10.5) before a (6.0); d has no rank: last.
    assert queue.entries(100.0, 96.0) == [
        ("b", 1000.0, 3), ("e", 100.0, 3), ("c", 10.0, 3), ("a", 10.0, 3), ("d", None, 3)]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["ann", "bob", "cy"]),
                          st.sampled_from([10.0, 50.0, 1000.0])), min_size=17, max_size=24),
       st.lists(st.tuples(st.sampled_from(["ann", "bob"]), st.sampled_from([10.0, 1000.0])),
                max_size=3),
       st.lists(st.tuples(st.sampled_from(["ann", "bob", "cy"]), st.sampled_from([20.0, 300.0])),
                max_size=4))
def test_a_long_queue_renumbers_in_one_numbering_when_the_history_sweeps(
        waiting: list[tuple[str, float]], asked: list[tuple[str, float]],
        done: list[tuple[str, float]]) -> None:
    # With ``_SLACK`` at 1 the history sweeps once it knows more than 16
    # jobs: more than 16 jobs waiting cannot all be numbered one at a time
    # without a sweep between two of them.
    with mock.patch.object(adaptive, "_SLACK", 1):
        h = RuntimeHistory()
        for k, (user, run) in enumerate(done):
            h.record(job(f"d{k}", {"cpu": P}, user=user, runtime_estimate=run), run / 2)
        queue = LearnedQueue(h)
        jobs = [job(f"j{k:02d}", {"cpu": P}, user=user, submit_time=float(k),
                    runtime_estimate=est) for k, (user, est) in enumerate(waiting)]
        for j in jobs:
            queue.add(j)
        for k, (user, est) in enumerate(asked):  # others' questions: a sweep
            h.number(job(f"x{k}", {"cpu": P}, user=user, runtime_estimate=est))
        got = queue.entries(100.0, INF)
        head = queue.head(100.0, INF)
        plain = plain_entries(h, {j.id: j for j in jobs}, 100.0, INF)
        assert got == plain
        assert head == (plain[0][0], plain[0][2])


def test_a_job_with_a_nan_submit_time_leaves_the_others_in_place() -> None:
    # A NaN compares false both ways: the bisection by submit time lands on
    # another job's place, and that job must not be the one removed.
    h = RuntimeHistory()
    queue = LearnedQueue(h)
    a, b, c = (job(name, {"cpu": P}, submit_time=t, runtime_estimate=10.0)
               for name, t in (("a", 0.0), ("b", math.nan), ("c", 5.0)))
    for j in (a, b, c):
        queue.add(j)
    queue.remove(c)
    assert [entry[0] for entry in queue.entries(math.inf, INF) or []] == ["a", "b"]
    queue.remove(b)
    queue.remove(a)
    assert len(queue) == 0
