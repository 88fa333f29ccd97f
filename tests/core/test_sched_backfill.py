"""Backfilling: none, EASY (pool and per-node), conservative."""

from __future__ import annotations

from apportion.core.model import Node
from apportion.core.scheduling import (
    ClusterState,
    SchedulerConfig,
    TaskPlacement,
    job,
    parse_constraints,
    schedule_cycle,
)
from apportion.core.scheduling.backfill import Profile, cached_easy_reservation
from apportion.core.scheduling.engine import Placer
from apportion.core.scheduling.policies import strategy

P = 1000  # one processor


def procs(n: int) -> ClusterState:
    return ClusterState([Node(f"n{i}", {"cpu": P}) for i in range(n)])


def run_for(state: ClusterState, job_id: str, nodes: list[str], start: float, est: float) -> None:
    j = job(job_id, {"cpu": P}, count=len(nodes), runtime_estimate=est)
    state.start(j, [TaskPlacement(n, {"cpu": P}) for n in nodes], start, est)


def cycle(state: ClusterState, jobs: list, mode: str, now: float = 20.0):  # type: ignore[no-untyped-def,type-arg]
    return schedule_cycle(state, jobs, now, SchedulerConfig(backfill=mode))


def queue() -> list:  # type: ignore[type-arg]
    # 4 processors; 2 busy until 100. Head needs 3; then a short and a long 1-proc job.
    return [
        job("head", {"cpu": P}, count=3, runtime_estimate=50, submit_time=10),
        job("short", {"cpu": P}, runtime_estimate=30, submit_time=11),
        job("long", {"cpu": P}, runtime_estimate=500, submit_time=12),
    ]


def test_no_backfill_lets_nothing_pass_the_head() -> None:
    state = procs(4)
    run_for(state, "r", ["n0", "n1"], 0.0, 100.0)
    r = cycle(state, queue(), "none")
    assert r.placements == ()
    assert r.unplaced["short"].message == "waiting behind head (no backfilling)"


def test_easy_starts_a_job_that_ends_before_the_reservation() -> None:
    state = procs(4)
    run_for(state, "r", ["n0", "n1"], 0.0, 100.0)
    r = cycle(state, queue(), "easy")
    assert [(p.job_id, p.backfilled) for p in r.placements] == [("short", True), ("long", True)]
    assert [(v.job_id, v.start) for v in r.reservations] == [("head", 100.0)]


def test_easy_lets_a_long_job_run_on_what_the_head_does_not_need() -> None:
    state = procs(4)
    run_for(state, "r", ["n0", "n1"], 0.0, 100.0)
    jobs = queue()
    jobs[0] = job("head", {"cpu": P}, count=4, runtime_estimate=50, submit_time=10)
    r = cycle(state, jobs, "easy")
    # Head needs all 4 at 100: the long job would delay it; the short one ends by 100.
    assert [p.job_id for p in r.placements] == ["short"]
    assert r.unplaced["long"].message == "would delay head, reserved to start at 100"


def test_easy_per_node_when_capacity_is_not_interchangeable() -> None:
    # Two node shapes, so the per-node shadow decides.
    state = ClusterState([Node("big", {"cpu": 4 * P}), Node("small", {"cpu": 2 * P})])
    hog = job("hog", {"cpu": 3 * P}, runtime_estimate=100)
    state.start(hog, [TaskPlacement("big", {"cpu": 3 * P})], 0.0, 100.0)
    jobs = [
        job("head", {"cpu": 4 * P}, runtime_estimate=50, submit_time=1),
        job("long-small", {"cpu": 2 * P}, runtime_estimate=900, submit_time=2),
        job("long-big", {"cpu": P}, runtime_estimate=900, submit_time=3,
            constraints=parse_constraints("")),
    ]
    r = cycle(state, jobs, "easy")
    assert [p.job_id for p in r.placements] == ["long-small"]
    assert r.reservations[0].nodes == {"big": {"cpu": 4 * P}}
    assert r.unplaced["long-big"].kind.value == "busy"


def test_conservative_reserves_for_every_waiting_job() -> None:
    state = procs(4)
    run_for(state, "r", ["n0", "n1"], 0.0, 100.0)
    jobs = [
        job("a", {"cpu": P}, count=4, runtime_estimate=50, submit_time=1),
        job("b", {"cpu": P}, count=3, runtime_estimate=50, submit_time=2),
        job("c", {"cpu": P}, count=2, runtime_estimate=60, submit_time=3),
        job("d", {"cpu": P}, count=1, runtime_estimate=500, submit_time=4),
    ]
    r = cycle(state, jobs, "conservative")
    # c fits now and ends at 80 <= 100; d (1 proc, long) would collide with a at 100.
    assert [p.job_id for p in r.placements] == ["c"]
    assert [(v.job_id, v.start) for v in r.reservations] == [
        ("a", 100.0), ("b", 150.0), ("d", 150.0)]


def test_profile_finds_the_first_window() -> None:
    prof = Profile(["cpu"], 0.0, [2], [(10.0, [2]), (30.0, [1])])
    assert prof.times == [0.0, 10.0, 30.0]
    assert prof.earliest([3], 5.0) == 10.0
    prof.reserve(10.0, [3], 15.0)
    assert prof.free == [[2], [1], [4], [5]]
    assert prof.times == [0.0, 10.0, 25.0, 30.0]
    assert prof.earliest([2], 20.0) == 25.0
    assert prof.earliest([1], None) == 0.0
    assert prof.earliest([6], None) is None


def test_an_overdrawn_head_node_leaves_an_unreserved_node_to_a_long_job() -> None:
    # The head (4 cpu) is reserved on big at 100. `short` ends before that and
    # goes on big first, which charges big's room past the reservation below
    # zero; `long` runs past the reservation and still fits on small, which
    # the head does not use.
    state = ClusterState([Node("big", {"cpu": 4 * P}), Node("small", {"cpu": 2 * P})])
    state.start(job("hog", {"cpu": P}), [TaskPlacement("big", {"cpu": P})], 0.0, 100.0)
    state.start(job("s", {"cpu": P}), [TaskPlacement("small", {"cpu": P})], 0.0, 1000.0)
    jobs = [job("head", {"cpu": 4 * P}, runtime_estimate=50, submit_time=10),
            job("short", {"cpu": P}, runtime_estimate=10, submit_time=11),
            job("long", {"cpu": P}, runtime_estimate=900, submit_time=12)]
    result = cycle(state, jobs, "easy")
    assert {p.job_id: [tp.node for tp in p.tasks] for p in result.placements} == {
        "short": ["big"], "long": ["small"]}


def _two_sizes(first_end: float) -> ClusterState:
    # Not a pool (two sizes of node): the head is planned node by node, so
    # the placer's strategy decides where.
    state = ClusterState([Node("a", {"cpu": 4 * P}), Node("b", {"cpu": 8 * P})])
    state.start(job("r1", {"cpu": 4 * P}), [TaskPlacement("a", {"cpu": 4 * P})], 0.0, first_end)
    state.start(job("r2", {"cpu": 8 * P}), [TaskPlacement("b", {"cpu": 8 * P})], 0.0, 100.0)
    return state


def test_a_cached_head_reservation_is_not_reused_by_another_strategy() -> None:
    state = _two_sizes(100.0)  # both nodes free at 100: the strategy picks
    head = job("h", {"cpu": 2 * P}, count=2)
    packed = cached_easy_reservation(state, Placer(state, strategy("binpack").options), head, 10.0)
    spread = cached_easy_reservation(state, Placer(state, strategy("spread").options), head, 10.0)
    assert packed is not None and spread is not None
    assert (packed.reservation.nodes, spread.reservation.nodes) == (
        {"a": {"cpu": 4 * P}}, {"a": {"cpu": 2 * P}, "b": {"cpu": 2 * P}})


def test_a_cached_head_reservation_is_not_reused_once_jobs_start_or_end() -> None:
    # At 8.0, r1 is past its end (1.0): the answer holds until 8.0 itself,
    # which is also the change count after one more end and start (each
    # counts two): only the change count can tell the cached answer stale.
    state = _two_sizes(1.0)
    pl = Placer(state, strategy("binpack").options)
    head = job("h", {"cpu": 2 * P}, count=2)
    first = cached_easy_reservation(state, pl, head, 8.0)
    assert first is not None and (first.reservation.start, first.reservation.nodes) == (
        8.0, {"a": {"cpu": 4 * P}})
    state.finish("r1")
    state.start(job("r3", {"cpu": 4 * P}), [TaskPlacement("a", {"cpu": 4 * P})], 8.0, 500.0)
    assert state.changes == 8
    again = cached_easy_reservation(state, pl, head, 8.0)
    assert again is not None and (again.reservation.start, again.reservation.nodes) == (
        100.0, {"b": {"cpu": 4 * P}})
