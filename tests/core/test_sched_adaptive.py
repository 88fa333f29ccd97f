"""The adaptive strategy: learned run times by level, weighed against the
user's estimate, corrected while jobs run; shortest-first with an aging bound."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apportion.core.model import Node
from apportion.core.scheduling import (
    ClusterState,
    RuntimeHistory,
    SchedulerConfig,
    TaskPlacement,
    job,
    schedule_cycle,
)
from apportion.core.scheduling.adaptive import CORRECTION_STEPS, AdaptiveOrder, size_class
from apportion.core.scheduling.jobs import Job, RunningJob
from apportion.core.scheduling.policies import OrderContext


def learned(runs: list[tuple[Job, float]]) -> RuntimeHistory:
    h = RuntimeHistory()
    for j, run in runs:
        h.record(j, run)
    return h


def test_size_class_is_the_request_rounded_up_to_a_power_of_two() -> None:
    assert [size_class(job("a", {"cpu": n * 1000})) for n in (1, 2, 3, 5, 64)] == [1, 2, 4, 8, 64]
    assert size_class(job("g", {"cpu": 500, "gpu": 3})) == 4


def test_a_level_is_used_only_with_enough_runs() -> None:
    h = learned([(job("1", {"cpu": 1000}, user="ann"), 100.0)])
    # One run of ann is not evidence; the broad levels need eight.
    assert h.predict(job("x", {"cpu": 1000}, user="ann")) is None
    h.record(job("2", {"cpu": 1000}, user="ann"), 300.0)
    assert h.predict(job("x", {"cpu": 1000}, user="ann")) == 200.0  # mean of the last two
    assert h.predict(job("y", {"cpu": 1000}, user="bob")) is None


def test_the_most_accurate_level_with_evidence_wins() -> None:
    # Ann alternates a 1-processor 10 s job and an 8-processor 5000 s job,
    # so her last two runs mislead; each size class has been right every time.
    runs = [(job(f"s{i}", {"cpu": 1000}, user=f"u{i}"), 10.0) for i in range(8)]
    runs += [(job(f"w{i}", {"cpu": 8000}, user=f"v{i}"), 5000.0) for i in range(8)]
    runs += [(job(f"a{i}", {"cpu": 8000 if i % 2 else 1000}, user="ann"),
              5000.0 if i % 2 else 10.0) for i in range(6)]
    h = learned(runs)
    assert h.errors["size"].mean == 0.0
    assert h.errors["user"].mean > 1.0
    assert h.predict(job("x", {"cpu": 1000}, user="ann")) == 10.0
    assert h.predict(job("y", {"cpu": 8000}, user="ann")) == 5000.0


def test_learned_and_given_are_weighed_by_their_measured_error() -> None:
    h = RuntimeHistory()
    # Bob always asks for 1000 s and runs 250 s; his last two runs are exact.
    for i in range(4):
        h.record(job(f"b{i}", {"cpu": 1000}, user="bob", runtime_estimate=1000.0), 250.0)
    given = job("x", {"cpu": 1000}, user="bob", runtime_estimate=1000.0)
    assert h.errors["user:bob"].mean == pytest.approx(math.log(1001 / 251))
    assert h.errors["user"].mean == 0.0
    # The learned value is exact, so it takes (almost) all the weight.
    assert h.estimate(given) == pytest.approx(250.0, abs=0.5)
    # Never above the user's estimate, which is a kill limit.
    short = job("y", {"cpu": 1000}, user="bob", runtime_estimate=100.0)
    assert h.estimate(short) == 100.0


def test_a_poor_level_plans_on_the_jobs_own_estimate_and_does_not_reorder() -> None:
    # Everyone's runs alternate between 1 s and 10,000 s: the global level
    # is off by far more than 8x on average.
    h = learned([(job(f"j{i}", {"cpu": 1000}), 1.0 if i % 2 else 10000.0) for i in range(40)])
    assert h.errors["global"].mean > math.log(8)
    with_estimate = job("x", {"cpu": 1000}, runtime_estimate=600.0)
    without = job("y", {"cpu": 1000})
    assert h.estimate(with_estimate) == 600.0
    assert h.rank(with_estimate) == 600.0
    assert h.rank(without) is None
    assert h.estimate(without) == h.predict(without)


def running(state: ClusterState, j: Job, start: float, estimate: float) -> RunningJob:
    return state.start(j, [TaskPlacement("n", dict(j.tasks[0].resources))], start, estimate)


def test_a_job_past_its_prediction_climbs_tsafrirs_ladder_up_to_its_kill_limit() -> None:
    state = ClusterState([Node("n", {"cpu": 4000})])
    h = RuntimeHistory()
    rj = running(state, job("r", {"cpu": 1000}, runtime_estimate=2000.0), 0.0, 100.0)
    assert CORRECTION_STEPS[:4] == (60.0, 300.0, 900.0, 1800.0)
    assert h.extend(rj, 100.0) == 160.0
    assert h.extend(rj, 160.0) == 460.0
    assert h.extend(rj, 170.0) == 460.0  # asking again gives the same rung
    assert h.extend(rj, 460.0) == 1360.0
    assert h.extend(rj, 1360.0) == 2000.0  # the kill limit comes first
    # Past its limit (a log may have such jobs) it still gets an end ahead.
    assert h.extend(rj, 2000.0) == 3160.0


def test_correct_moves_overdue_jobs_in_the_index_of_ends() -> None:
    state = ClusterState([Node("n", {"cpu": 4000})])
    h = RuntimeHistory()
    running(state, job("a", {"cpu": 1000}), 0.0, 50.0)
    running(state, job("b", {"cpu": 1000}), 0.0, 500.0)
    assert h.correct(state, 100.0) == 1
    assert list(state.ends) == [(110.0, "a"), (500.0, "b")]
    assert state.running["a"].estimate == 110.0
    assert state.past_estimate(100.0) == {}
    assert h.correct(state, 100.0) == 0


def test_the_heads_reservation_stops_moving_once_the_overdue_job_is_corrected() -> None:
    # A 3-processor job runs past its predicted end while a 4-processor job
    # waits: without the correction its reservation would be "now" at every
    # cycle; with it, the reservation is the corrected end and stays there.
    state = ClusterState([Node("n", {"cpu": 4000})])
    h = RuntimeHistory()
    running(state, job("long", {"cpu": 3000}), 0.0, 100.0)
    head = job("head", {"cpu": 4000}, submit_time=0.0)
    config = SchedulerConfig(strategy="adaptive")
    starts = []
    for now in (120.0, 130.0, 150.0):
        result = schedule_cycle(state, [head], now, config, history=h)
        starts.append(result.reservations[0].start)
    assert starts == [160.0, 160.0, 160.0]


def order_of(jobs: list[Job], now: float, bound: float, by: str = "sjf") -> list[str]:
    state = ClusterState([Node("n", {"cpu": 1000})])
    ctx = OrderContext(now, {}, state, lambda j: j.runtime_estimate, 0.0, bound)
    return [j.id for j in AdaptiveOrder(by).order(jobs, ctx)]


def test_shortest_first_until_the_aging_bound_then_submit_order() -> None:
    jobs = [job("old-long", {"cpu": 1}, submit_time=0, runtime_estimate=5000),
            job("older-long", {"cpu": 1}, submit_time=-10, runtime_estimate=9000),
            job("new-short", {"cpu": 1}, submit_time=900, runtime_estimate=10),
            job("unknown", {"cpu": 1}, submit_time=950),
            job("mid", {"cpu": 1}, submit_time=500, runtime_estimate=100)]
    assert order_of(jobs, 1000.0, bound=3600) == [
        "new-short", "mid", "old-long", "older-long", "unknown"]
    assert order_of(jobs, 1000.0, bound=1000) == [
        "older-long", "old-long", "new-short", "mid", "unknown"]


def test_response_ratio_order_is_kept_as_the_measured_alternative() -> None:
    jobs = [job("long", {"cpu": 1}, submit_time=0, runtime_estimate=1000),
            job("short", {"cpu": 1}, submit_time=900, runtime_estimate=50)]
    # Ratios at 1000 s: long (1000 + 1000) / 1000 = 2, short (100 + 50) / 50 = 3.
    assert order_of(jobs, 1000.0, bound=1e9, by="hrrn") == ["short", "long"]
    assert order_of(jobs, 2000.0, bound=1e9, by="hrrn") == ["short", "long"]
    assert order_of(jobs, 1000.0, bound=1e9, by="sjf") == ["short", "long"]


# -- starvation: a property on random traces --------------------------------------

P = 1000


@st.composite
def traces(draw: st.DrawFn) -> tuple[int, list[tuple[Job, float]]]:
    procs = draw(st.integers(1, 6))
    out = []
    for i in range(draw(st.integers(1, 30))):
        run = float(draw(st.integers(1, 400)))
        given = draw(st.sampled_from([None, "exact", "over"]))
        estimate = None if given is None else run if given == "exact" else run * 4
        j = job(f"j{i:02d}", {"cpu": P}, count=draw(st.integers(1, procs)),
                submit_time=float(draw(st.integers(0, 600))), runtime_estimate=estimate,
                user=draw(st.sampled_from([None, "ann", "bob"])))
        out.append((j, run))
    return procs, out


def replay_checking_the_bound(procs: int, trace: list[tuple[Job, float]], bound: float
                              ) -> dict[str, float]:
    """Replay ``trace`` with adaptive + EASY (ends, then arrivals, then one
    cycle per instant) and check every cycle: while a job past the aging
    bound waits, every job started in queue order (not backfilled) is one
    past the bound that was submitted before it. Returns the start times."""
    state = ClusterState([Node(f"n{i}", {"cpu": P}) for i in range(procs)])
    config = SchedulerConfig(strategy="adaptive", aging_bound_s=bound, preemption=False)
    history = RuntimeHistory()
    runs = {j.id: (j, run) for j, run in trace}
    arrivals = sorted(trace, key=lambda jr: (jr[0].submit_time, jr[0].id))
    ends: list[tuple[float, str]] = []
    pending: dict[str, Job] = {}
    starts: dict[str, float] = {}
    i = 0
    while i < len(arrivals) or ends:
        now = min([e[0] for e in ends]
                  + ([arrivals[i][0].submit_time] if i < len(arrivals) else []))
        for end, job_id in [e for e in ends if e[0] == now]:
            ends.remove((end, job_id))
            state.finish(job_id)
            history.record(*runs[job_id])
        while i < len(arrivals) and arrivals[i][0].submit_time == now:
            pending[arrivals[i][0].id] = arrivals[i][0]
            i += 1
        aged = [j for j in pending.values() if now - j.submit_time >= bound]
        result = schedule_cycle(state, list(pending.values()), now, config, history=history)
        started = {p.job_id for p in result.placements}
        still = [j.fifo_key for j in aged if j.id not in started]
        for p in result.placements:
            if still and not p.backfilled:
                passer = pending[p.job_id]
                assert now - passer.submit_time >= bound and passer.fifo_key < min(still)
            del pending[p.job_id]
            starts[p.job_id] = now
            ends.append((now + runs[p.job_id][1], p.job_id))
    assert not pending, "every job starts"
    return starts


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(traces(), st.sampled_from([0.0, 50.0, 200.0]))
def test_adaptive_never_lets_a_job_past_its_aging_bound_be_overtaken(
        trace: tuple[int, list[tuple[Job, float]]], bound: float) -> None:
    procs, jobs = trace
    starts = replay_checking_the_bound(procs, jobs, bound)
    assert set(starts) == {j.id for j, _ in jobs}


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1000), st.sampled_from([None, 1.0, 60.0, 5000.0])),
                min_size=1, max_size=20), st.integers(0, 2000), st.sampled_from([0.0, 300.0]))
def test_the_order_puts_jobs_past_the_bound_first_in_submit_order(
        spec: list[tuple[int, float | None]], now: int, bound: float) -> None:
    jobs = [job(f"j{i:02d}", {"cpu": 1}, submit_time=float(t), runtime_estimate=e)
            for i, (t, e) in enumerate(spec)]
    ordered = [jobs[int(name[1:])] for name in order_of(jobs, float(now), bound)]
    aged = [now - j.submit_time >= bound for j in ordered]
    assert aged == sorted(aged, reverse=True)  # every aged job before every other
    first = [j.fifo_key for j, a in zip(ordered, aged, strict=True) if a]
    assert first == sorted(first)


def test_without_backfilling_the_ratio_alone_orders() -> None:
    # An aged 2-processor job cannot start; with backfilling it is the head
    # and the short job may pass only by backfilling (here it cannot: it
    # would end after the head's reservation). Without backfilling the
    # bound does not apply, so the short job's higher ratio puts it first.
    state = ClusterState([Node("n", {"cpu": P}), Node("m", {"cpu": P})])
    running(state, job("busy", {"cpu": P}), 0.0, 1000.0)
    aged = job("aged", {"cpu": P}, count=2, submit_time=0.0, runtime_estimate=50000.0)
    short = job("short", {"cpu": P}, submit_time=900.0, runtime_estimate=500.0)
    started = {}
    for backfill in ("easy", "none"):
        config = SchedulerConfig(strategy="adaptive", backfill=backfill, aging_bound_s=500.0)
        result = schedule_cycle(state.copy(), [aged, short], 1000.0, config,
                                history=RuntimeHistory())
        started[backfill] = [p.job_id for p in result.placements]
    assert started == {"easy": [], "none": ["short"]}
