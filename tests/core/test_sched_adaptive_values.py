"""The adaptive strategy's parts one at a time, with literal values: the
settings, the running mean of errors, the keys and the typical value, what
``record`` keeps, each answer of ``estimate``/``rank``, the ladder of
``extend`` and the sweep of ``correct``, and the order's keys at their edges."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from apportion.core.model import Node
from apportion.core.scheduling import (
    ClusterState,
    RuntimeHistory,
    SchedulerConfig,
    TaskPlacement,
    job,
    schedule_cycle,
)
from apportion.core.scheduling.adaptive import (
    _SLACK,
    LEVELS,
    AdaptiveOrder,
    LearnSettings,
    _Error,
    _keys,
    _ladder,
    size_class,
)
from apportion.core.scheduling.adaptive_parts import _log_error, _typical
from apportion.core.scheduling.jobs import Job, RunningJob
from apportion.core.scheduling.policies import OrderContext

P = 1000


def test_the_settings_and_levels() -> None:
    s = LearnSettings()
    assert dict(s.min_runs) == {"user+name": 2, "user": 2, "name": 3, "queue": 8, "size": 8,
                                "global": 8}
    assert dict(s.depth) == {"user+name": 2, "user": 2, "name": 2, "queue": 32, "size": 32,
                             "global": 32}
    assert s.max_error == math.log(8.0)
    assert s.smoothing == 0.02
    assert LEVELS == ("user+name", "user", "name", "queue", "size", "global")


def test_size_class_edges() -> None:
    sizes = [size_class(job("a", r)) for r in (
        {"memory": 1}, {"cpu": 1}, {"cpu": 1000}, {"cpu": 1001}, {"cpu": 2000}, {"cpu": 4001},
        {"gpu": 1, "cpu": 64000}, {"gpu": 2}, {"gpu": 4}, {"gpu": 5})]
    assert sizes == [1, 1, 1, 2, 2, 8, 1, 2, 4, 8]


def test_the_running_mean_of_errors_floors_its_weight() -> None:
    e = _Error()
    assert (e.mean, e.count) == (0.0, 0)
    for value in (1.0, 3.0, 5.0, 9.0):
        e.add(value, 0.3)
    # weights 1, 1/2, 1/3, then 1/4 floored at 0.3
    assert e.count == 4
    assert e.mean == pytest.approx(3.0 + 0.3 * (9.0 - 3.0))
    e = _Error()
    e.add(2.0, 0.0)
    e.add(4.0, 0.0)
    assert e.mean == 3.0


def test_log_error_adds_a_second_to_both_sides() -> None:
    assert _log_error(0.0, 1.0) == math.log(2.0)
    assert _log_error(3.0, 1.0) == math.log(2.0)
    assert _log_error(5.0, 5.0) == 0.0


def test_typical_is_the_mean_of_two_or_the_median() -> None:
    assert _typical([4.0]) == 4.0
    assert _typical([1.0, 5.0]) == 3.0
    assert _typical([10.0, 1.0, 2.0]) == 2.0
    assert _typical([20.0, 1.0, 10.0, 2.0]) == 6.0
    assert _typical([5.0, 1.0, 2.0, 8.0, 3.0]) == 3.0


def test_keys_most_specific_first() -> None:
    assert _keys(job("a", {"cpu": 3 * P}, user="ann", name="t", queue="q")) == [
        ("user+name", ("ann", "t")), ("user", "ann"), ("name", "t"), ("queue", "q"),
        ("size", 4), ("global", None)]
    assert _keys(job("a", {"cpu": P}, user="ann")) == [
        ("user", "ann"), ("queue", "default"), ("size", 1), ("global", None)]
    assert _keys(job("a", {"gpu": 2}, name="t")) == [
        ("name", "t"), ("queue", "default"), ("size", 2), ("global", None)]


def test_record_keeps_runs_per_key_and_scores_the_users_estimate() -> None:
    h = RuntimeHistory()
    h.record(job("1", {"cpu": P}, user="ann", name="t", runtime_estimate=30.0), 10.0)
    assert {k: list(v) for k, v in h.runs.items()} == {
        ("user+name", ("ann", "t")): [10.0], ("user", "ann"): [10.0], ("name", "t"): [10.0],
        ("queue", "default"): [10.0], ("size", 1): [10.0], ("global", None): [10.0]}
    assert {k: v.maxlen for k, v in h.runs.items()} == {
        ("user+name", ("ann", "t")): 2, ("user", "ann"): 2, ("name", "t"): 2,
        ("queue", "default"): 32, ("size", 1): 32, ("global", None): 32}
    assert h.typical == {}
    assert set(h.errors) == {"user:ann", "user:"}
    assert h.errors["user:ann"] == _Error(math.log(31 / 11), 1)
    assert h.errors["user:"] == _Error(math.log(31 / 11), 1)
    h.record(job("2", {"cpu": P}, user="ann", name="t", runtime_estimate=30.0), 20.0)
    assert h.typical == {("user+name", ("ann", "t")): 15.0, ("user", "ann"): 15.0}
    assert h.errors["user:ann"].count == 2
    # the third run is scored against the two levels that predict (15 s)
    h.record(job("3", {"cpu": P}, user="ann", name="t"), 40.0)
    assert h.errors["user+name"] == _Error(math.log(41 / 16), 1)
    assert h.errors["user"] == _Error(math.log(41 / 16), 1)
    assert h.errors["user:ann"].count == 2  # no estimate: not scored
    assert h.typical[("user+name", ("ann", "t"))] == 30.0
    assert h.typical[("user", "ann")] == 30.0
    assert list(h.runs[("user", "ann")]) == [20.0, 40.0]
    assert list(h.runs[("global", None)]) == [10.0, 20.0, 40.0]


def test_record_of_a_job_without_user_scores_the_anonymous_estimates() -> None:
    h = RuntimeHistory()
    h.record(job("1", {"cpu": P}, runtime_estimate=3.0), 1.0)
    assert h.errors == {"user:": _Error(math.log(2.0), 1)}


def test_record_uses_the_keys_cached_for_the_job_and_drops_them() -> None:
    h = RuntimeHistory()
    j = job("1", {"cpu": P}, user="ann")
    assert h.estimate(j) is None
    assert "1" in h.key_cache
    h.record(j, 10.0)
    assert "1" not in h.key_cache
    assert list(h.runs[("user", "ann")]) == [10.0]


def test_record_forgets_the_answers_and_the_corrections() -> None:
    h = RuntimeHistory()
    for i in range(2):
        h.record(job(f"b{i}", {"cpu": P}, user="bob"), 100.0)
    j = job("x", {"cpu": P}, user="bob")
    assert h.estimate(j) == 100.0
    rj = RunningJob(j, 0.0, (TaskPlacement("n", {"cpu": P}),), 100.0)
    assert h.extend(rj, 100.0) == 160.0
    assert h.corrections == {"x": (0.0, 100.0)}
    h.record(job("b2", {"cpu": P}, user="bob"), 300.0)
    assert h.estimate(j) == 200.0  # asked again after a record: answered afresh
    h.record(j, 5.0)
    assert h.corrections == {}


def test_the_most_specific_level_wins_a_tie_and_one_without_error_loses() -> None:
    h = RuntimeHistory()
    for i in range(3):
        h.record(job(f"a{i}", {"cpu": P}, user="ann", name="t"), 50.0)
    # user+name and user both exact, same value; name (3 runs) has no error yet
    assert h.errors["user+name"].mean == 0.0
    assert h._learned(job("x", {"cpu": P}, user="ann", name="t")) == ("user+name", 50.0)
    h = RuntimeHistory()
    h.record(job("a0", {"cpu": P}, user="ann", name="t"), 10.0)
    h.record(job("a1", {"cpu": P}, user="ann", name="u"), 30.0)
    h.record(job("a2", {"cpu": P}, user="ann", name="t"), 30.0)
    # user (mean 20, scored once) beats user+name (10 and 30: never scored)
    assert h._learned(job("y", {"cpu": P}, user="ann", name="t")) == ("user", 30.0)
    assert h.predict(job("z", {"cpu": P}, user="cid")) is None


def test_answers_without_learning_or_without_estimate() -> None:
    h = RuntimeHistory()
    j = job("a", {"cpu": P}, runtime_estimate=70.0)
    assert (h.estimate(j), h.rank(j)) == (70.0, 70.0)
    for i in range(2):
        h.record(job(f"b{i}", {"cpu": P}, user="bob"), 100.0)
    j = job("b", {"cpu": P}, user="bob")
    assert (h.estimate(j), h.rank(j)) == (100.0, 100.0)


def test_a_learned_value_without_measured_errors_is_capped_by_the_estimate() -> None:
    h = RuntimeHistory()
    for i in range(2):
        h.record(job(f"b{i}", {"cpu": P}, user="bob"), 100.0)
    assert (h.estimate(job("x", {"cpu": P}, user="bob", runtime_estimate=400.0))) == 100.0
    assert (h.estimate(job("y", {"cpu": P}, user="bob", runtime_estimate=40.0))) == 40.0
    # the level is measured, but no user's estimate ever was
    h.record(job("b2", {"cpu": P}, user="bob"), 300.0)
    assert h.estimate(job("z", {"cpu": P}, user="bob", runtime_estimate=400.0)) == 200.0


def weighed(learned: float, err: float, given: float, user_err: float) -> float:
    w_l, w_g = 1 / max(err, 0.01) ** 2, 1 / max(user_err, 0.01) ** 2
    return math.exp((w_l * math.log(learned + 1) + w_g * math.log(given + 1))
                    / (w_l + w_g)) - 1


def test_mixed_is_the_weighted_geometric_mean() -> None:
    h = RuntimeHistory()
    h.record(job("b0", {"cpu": P}, user="bob", runtime_estimate=400.0), 100.0)
    h.record(job("b1", {"cpu": P}, user="bob", runtime_estimate=400.0), 300.0)
    h.record(job("b2", {"cpu": P}, user="bob", runtime_estimate=900.0), 100.0)
    h.record(job("a0", {"cpu": P}, user="ann", runtime_estimate=100.0), 100.0)
    user_err = h.errors["user:bob"].mean
    assert user_err != h.errors["user:"].mean  # bob's own error, not everyone's
    err = h.errors["user"].mean
    assert err == math.log(201 / 101)
    assert h.typical[("user", "bob")] == 200.0
    x = job("x", {"cpu": P}, user="bob", runtime_estimate=300.0)
    assert h.estimate(x) == pytest.approx(weighed(200.0, err, 300.0, user_err), rel=1e-12)
    assert h.rank(x) == h.estimate(x)
    # another name: the same level and user
    y = job("y", {"cpu": P}, user="bob", runtime_estimate=500.0, name="n")
    assert h.estimate(y) == pytest.approx(weighed(200.0, err, 500.0, user_err), rel=1e-12)


def test_mixed_falls_back_on_all_users_errors() -> None:
    h = RuntimeHistory()
    h.record(job("b0", {"cpu": P}, user="bob", runtime_estimate=400.0), 100.0)
    for i in range(8):
        h.record(job(f"c{i}", {"cpu": P}, queue="q"), 100.0 * (1 + i % 2))
    # queue q: 8 runs, median 150; scored? no: the level predicted only after the 8th
    h.record(job("c8", {"cpu": P}, queue="q"), 150.0)
    assert h.errors["queue"] == _Error(0.0, 1)
    assert h.typical[("queue", "q")] == 150.0
    x = job("x", {"cpu": P}, user="cid", queue="q", runtime_estimate=600.0)
    # the queue level is exact: its weight is 1/0.01**2
    expected = weighed(150.0, 0.0, 600.0, math.log(401 / 101))
    assert h.estimate(x) == pytest.approx(expected, rel=1e-12)
    assert 150.0 < expected < 150.5


def test_mixed_with_an_exact_estimate_and_never_below_zero() -> None:
    h = RuntimeHistory()
    for i in range(2):
        h.record(job(f"b{i}", {"cpu": P}, user="bob", runtime_estimate=0.0), 0.0)
    h.record(job("b2", {"cpu": P}, user="bob", runtime_estimate=0.0), 0.0)
    assert h.errors["user:bob"] == _Error(0.0, 3)
    assert h.errors["user"] == _Error(0.0, 1)
    assert h.estimate(job("x", {"cpu": P}, user="bob", runtime_estimate=0.0)) == 0.0


def poor_history(runs: int) -> RuntimeHistory:
    """``runs`` jobs of ann alternating 1 s and 10,000 s: the user level is far off."""
    h = RuntimeHistory()
    for i in range(runs):
        h.record(job(f"a{i}", {"cpu": P}, user="ann", name=f"n{i}"), 1e4 if i % 2 else 1.0)
    return h


def test_a_level_is_poor_only_after_min_runs_scores_above_max_error() -> None:
    h = poor_history(3)  # user scored once: not yet poor however far off
    assert h.errors["user"].count == 1
    assert h.errors["user"].mean > math.log(8)
    j = job("x", {"cpu": P}, user="ann", runtime_estimate=1e4)
    assert h.estimate(j) == 5000.5  # no user's error: the smaller
    assert h.rank(job("y", {"cpu": P}, user="ann")) == 5000.5
    h = poor_history(4)  # scored twice: poor
    assert h.errors["user"].count == 2
    assert h.estimate(job("x", {"cpu": P}, user="ann", runtime_estimate=1e4)) == 1e4
    assert h.rank(job("x2", {"cpu": P}, user="ann", runtime_estimate=1e4)) == 1e4
    y = job("y", {"cpu": P}, user="ann")
    assert (h.estimate(y), h.rank(y)) == (5000.5, None)


def test_a_cycle_orders_by_rank_a_job_planned_on_a_poor_guess_keeps_its_place() -> None:
    # y has no estimate and only a poor learned one: it is planned on 5000.5
    # s but not reordered by it, so bob's job, ranked by its estimate, goes
    # first. Ordered by the plan instead, y's response ratio would win.
    h = poor_history(4)
    y = job("y", {"cpu": P}, user="ann", submit_time=0.0)
    z = job("z", {"cpu": P}, user="bob", runtime_estimate=1e6, submit_time=0.0)
    assert (h.estimate(y), h.rank(y), h.rank(z)) == (5000.5, None, 1e6)
    state = ClusterState([Node("n", {"cpu": P})])
    result = schedule_cycle(state, [y, z], 100.0, SchedulerConfig(strategy="adaptive"),
                            history=h)
    assert [p.job_id for p in result.placements] == ["z"]


def test_a_level_exactly_at_max_error_is_not_poor() -> None:
    h = RuntimeHistory(LearnSettings(max_error=0.0))
    for i in range(3):
        h.record(job(f"a{i}", {"cpu": P}, user="ann"), 10.0)
    assert h.errors["user"] == _Error(0.0, 1)
    h.record(job("a3", {"cpu": P}, user="ann"), 10.0)
    y = job("y", {"cpu": P}, user="ann")
    assert (h.estimate(y), h.rank(y)) == (10.0, 10.0)


def test_the_same_keys_and_estimate_share_a_signature() -> None:
    h = RuntimeHistory()
    a, b = job("a", {"cpu": P}, user="ann"), job("b", {"cpu": P}, user="ann")
    c = job("c", {"cpu": P}, user="ann", runtime_estimate=5.0)
    for j in (a, b, c):
        h.estimate(j)
    assert h.key_cache["a"][1] == h.key_cache["b"][1] == 0
    assert h.key_cache["c"][1] == 1
    assert h.signatures == {(("user", "ann"), ("queue", "default"), ("size", 1),
                             ("global", None), None): 0,
                            (("user", "ann"), ("queue", "default"), ("size", 1),
                             ("global", None), 5.0): 1}
    assert h.answers == {0: (None, None), 1: (5.0, 5.0)}


def run_of(j: Job, start: float, estimate: float | None) -> RunningJob:
    return RunningJob(j, start, (TaskPlacement("n", {"cpu": P}),), estimate)


def test_the_ladder_goes_on_with_its_last_step() -> None:
    steps = _ladder()
    assert [next(steps) for _ in range(13)] == [
        60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 18000.0, 36000.0, 72000.0, 180000.0,
        360000.0, 360000.0, 360000.0]


def test_extend_from_the_first_estimate_and_from_none() -> None:
    h = RuntimeHistory()
    j = job("r", {"cpu": P})
    assert h.extend(run_of(j, 100.0, 40.0), 140.0) == 100.0  # 40 + 60, elapsed 40
    assert h.extend(run_of(j, 100.0, 100.0), 200.0) == 400.0  # the ladder of the first: 40
    assert h.corrections == {"r": (100.0, 40.0)}
    # a new run (another start) starts a new ladder, from 0 with no estimate
    assert h.extend(run_of(j, 500.0, None), 500.0) == 60.0
    assert h.corrections == {"r": (500.0, 0.0)}
    # past the whole ladder: 679,860 s of steps, then 360,000 s each
    assert h.extend(run_of(job("s", {"cpu": P}), 0.0, 0.0), 679_859.0) == 679_860.0
    assert h.extend(run_of(job("s", {"cpu": P}), 0.0, 0.0), 679_860.0) == 1_039_860.0
    assert h.extend(run_of(job("s", {"cpu": P}), 0.0, 0.0), 1_039_860.0) == 1_399_860.0


def test_extend_stops_at_the_kill_limit_only_while_it_is_ahead() -> None:
    h = RuntimeHistory()
    j = job("r", {"cpu": P}, runtime_estimate=150.0)
    assert h.extend(run_of(j, 0.0, 100.0), 120.0) == 150.0  # 160 capped at 150
    assert h.extend(run_of(j, 0.0, 100.0), 150.0) == 160.0  # the limit is not ahead
    k = job("k", {"cpu": P}, runtime_estimate=170.0)
    assert h.extend(run_of(k, 0.0, 100.0), 120.0) == 160.0


def test_correct_only_jobs_past_their_end() -> None:
    state = ClusterState([Node("n", {"cpu": 4 * P})])
    h = RuntimeHistory()
    state.start(job("a", {"cpu": P}), [TaskPlacement("n", {"cpu": P})], 0.0, 100.0)
    state.start(job("b", {"cpu": P}), [TaskPlacement("n", {"cpu": P})], 0.0, 100.5)
    state.start(job("c", {"cpu": P}), [TaskPlacement("n", {"cpu": P})], 0.0, 99.0)
    assert h.correct(state, 99.5) == 1
    assert list(state.ends) == [(100.0, "a"), (100.5, "b"), (159.0, "c")]
    # an end exactly at now is due
    assert h.correct(state, 100.0) == 1
    assert list(state.ends) == [(100.5, "b"), (159.0, "c"), (160.0, "a")]
    assert h.correct(state, 100.2) == 0


def test_correct_sweeps_corrections_of_jobs_that_no_longer_run() -> None:
    state = ClusterState([Node("n", {"cpu": 4 * P})])
    h = RuntimeHistory()
    h.corrections = {f"gone{i}": (0.0, 1.0) for i in range(_SLACK + 2)}
    state.start(job("a", {"cpu": P}), [TaskPlacement("n", {"cpu": P})], 0.0, 10.0)
    assert h.correct(state, 20.0) == 1
    # 4,097 + 1 entries > 2 * 1 + 4,096: swept down to the running job
    assert h.corrections == {"a": (0.0, 10.0)}
    h.corrections.update({f"gone{i}": (0.0, 1.0) for i in range(_SLACK + 1)})
    assert h.correct(state, 80.0) == 1
    assert len(h.corrections) == _SLACK + 2  # 4,098 is not more than 4,098
    state.start(job("b", {"cpu": P}), [TaskPlacement("n", {"cpu": P})], 0.0, 10.0)
    assert h.correct(state, 500.0) == 2
    # two running: 4,099 entries are not more than 2 * 2 + 4,096
    assert len(h.corrections) == _SLACK + 3


def ctx(now: float, bound: float,
        rank: Callable[[Job], float | None] | None = None) -> OrderContext:
    state = ClusterState([Node("n", {"cpu": P})])
    return OrderContext(now, {}, state, lambda j: j.runtime_estimate, 0.0, bound, rank)


def test_adaptive_order_refuses_an_unknown_kind() -> None:
    with pytest.raises(ValueError) as err:
        AdaptiveOrder("fifo")
    assert str(err.value) == "by: 'fifo' is not sjf or hrrn"
    assert AdaptiveOrder().by == "hrrn"
    assert AdaptiveOrder("sjf").by == "sjf"
    assert AdaptiveOrder.name == "adaptive"


def test_hrrn_keys_at_their_edges() -> None:
    # a wait of exactly the bound is aged; an estimate below 1 s counts as 1 s;
    # a job submitted in the future waits 0
    jobs = [job("tiny", {"cpu": 1}, submit_time=90.0, runtime_estimate=0.25),
            job("one", {"cpu": 1}, submit_time=89.0, runtime_estimate=1.0),
            job("aged", {"cpu": 1}, submit_time=0.0, runtime_estimate=1e6),
            job("future", {"cpu": 1}, submit_time=150.0, runtime_estimate=2.0),
            job("long", {"cpu": 1}, submit_time=50.0, runtime_estimate=100.0)]
    order = AdaptiveOrder().order(jobs, ctx(100.0, 100.0))
    # ratios: tiny (10 + 1) / 1 = 11, one (11 + 1) / 1 = 12, future (0 + 2) / 2 = 1,
    # long (50 + 100) / 100 = 1.5
    assert [j.id for j in order] == ["aged", "one", "tiny", "long", "future"]


def test_hrrn_ties_by_submit_time_then_id_and_rank_before_estimate() -> None:
    jobs = [job("b", {"cpu": 1}, submit_time=0.0, runtime_estimate=10.0),
            job("a", {"cpu": 1}, submit_time=0.0, runtime_estimate=10.0),
            job("c", {"cpu": 1}, submit_time=-10.0, runtime_estimate=30.0)]
    # ratios 2, 2 and (40 + 30) / 30
    assert [j.id for j in AdaptiveOrder().order(jobs, ctx(10.0, 1e9))] == ["a", "b", "c"]
    ranked = ctx(10.0, 1e9, lambda j: {"a": 100.0, "b": 10.0, "c": None}[j.id])
    assert [j.id for j in AdaptiveOrder().order(jobs, ranked)] == ["b", "a", "c"]


def test_sjf_and_aged_keys() -> None:
    jobs = [job("x", {"cpu": 1}, submit_time=5.0, runtime_estimate=10.0),
            job("w", {"cpu": 1}, submit_time=5.0, runtime_estimate=10.0),
            job("y", {"cpu": 1}, submit_time=1.0, runtime_estimate=20.0),
            job("n", {"cpu": 1}, submit_time=0.0),
            job("old2", {"cpu": 1}, submit_time=-50.0, runtime_estimate=1.0),
            job("old1", {"cpu": 1}, submit_time=-50.0, runtime_estimate=9.0)]
    order = AdaptiveOrder("sjf").order(jobs, ctx(10.0, 60.0))
    assert [j.id for j in order] == ["old1", "old2", "w", "x", "y", "n"]


def hrrn(jobs: list[Job], now: float = 100.0) -> list[str]:
    return [j.id for j in AdaptiveOrder().order(jobs, ctx(now, 1e9))]


def test_hrrn_estimates_between_one_and_two_seconds_count_as_they_are() -> None:
    # A: (3 + 1.5) / 1.5 = 3; B: (2.5 + 1) / 1 = 3.5
    assert hrrn([job("A", {"cpu": 1}, submit_time=97.0, runtime_estimate=1.5),
                 job("B", {"cpu": 1}, submit_time=97.5, runtime_estimate=1.0)]) == ["B", "A"]
    # tiny: (10 + 1) / 1 = 11 (an estimate under 1 s counts as 1 s); m: (80 + 10) / 10 = 9
    assert hrrn([job("m", {"cpu": 1}, submit_time=20.0, runtime_estimate=10.0),
                 job("tiny", {"cpu": 1}, submit_time=90.0, runtime_estimate=0.25)]
                ) == ["tiny", "m"]


def test_hrrn_counts_a_wait_below_a_second_and_none_before_submission() -> None:
    # X: (0.5 + 1) / 1 = 1.5; Y: (2 + 5) / 5 = 1.4
    assert hrrn([job("Y", {"cpu": 1}, submit_time=98.0, runtime_estimate=5.0),
                 job("X", {"cpu": 1}, submit_time=99.5, runtime_estimate=1.0)]) == ["X", "Y"]
    # submitted after now: a wait of 0, a ratio of 1, then submit order
    assert hrrn([job("F2", {"cpu": 1}, submit_time=120.0, runtime_estimate=1000.0),
                 job("F1", {"cpu": 1}, submit_time=110.0, runtime_estimate=1.0)]) == ["F1", "F2"]
    # Z: (1 + 2) / 2 = 1.5 before F at 1
    assert hrrn([job("F", {"cpu": 1}, submit_time=105.0, runtime_estimate=1.0),
                 job("Z", {"cpu": 1}, submit_time=99.0, runtime_estimate=2.0)]) == ["Z", "F"]
