"""EASY's one-task reservation at "now" by walking the jobs past their
estimate in id order (``backfill._first_fitting_now``), and the sorted ids
it walks (``ClusterState.past_ids``): the walk takes the node the scan of
every freed node takes, it reads no per-node sums when it finds one, and
when it gives up the scan answers the same."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apportion.core.scheduling import ClusterState, TaskPlacement, backfill, job
from apportion.core.scheduling.backfill import (
    HeadReservation,
    easy_reservation,
    running_ends,
)
from apportion.core.scheduling.engine import Placer
from apportion.core.scheduling.policies import strategy
from sched_support import P, hold, nodes, past_ids_recounted


def view(h: HeadReservation | None) -> object:
    if h is None:
        return None
    r = h.reservation
    return (r.job_id, r.start, dict(r.nodes), h.extra)


def quick(state: ClusterState, j: object, now: float) -> object:
    """The one-task reservation, checked against the general method."""
    pl = Placer(state, strategy("fifo").options)
    got = view(easy_reservation(state, pl, j, now))  # type: ignore[arg-type]
    want = view(easy_reservation(state, pl, j, now,  # type: ignore[arg-type]
                                 ends=running_ends(state, now)))
    assert got == want
    return got


def no_sums(state: ClusterState, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(now: float) -> object:
        raise AssertionError("the per-node sums were read")
    monkeypatch.setattr(state, "past_estimate", refuse)


# -- literal cases -------------------------------------------------------------


def test_a_node_freed_now_counts_every_job_past_its_estimate_on_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # At 50, a, b and c are past their estimate; n0 frees 2 only once a and
    # c both end, and a comes first by id: n0, not b's n1.
    state = nodes(3)
    hold(state, "a", ["n0"], 0.0, 10.0)
    hold(state, "b", ["n1"], 0.0, 20.0, cpu=2 * P)
    hold(state, "c", ["n0"], 0.0, 30.0)
    hold(state, "d", ["n2"], 0.0, None, cpu=2 * P)
    no_sums(state, monkeypatch)
    assert quick(state, job("t", {"cpu": 2 * P}), 50.0) == (
        "t", 50.0, {"n0": {"cpu": 2 * P}}, {"n0": {"cpu": 0}})


def test_a_job_not_yet_past_its_estimate_keeps_its_share(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a is past its estimate at 50 but z on the same node is not: n0 frees
    # one processor, so b's n1 is taken.
    state = nodes(2)
    hold(state, "a", ["n0"], 0.0, 10.0)
    hold(state, "z", ["n0"], 0.0, 90.0)
    hold(state, "b", ["n1"], 0.0, 20.0, cpu=2 * P)
    no_sums(state, monkeypatch)
    assert quick(state, job("t", {"cpu": 2 * P}), 50.0) == (
        "t", 50.0, {"n1": {"cpu": 2 * P}}, {"n1": {"cpu": 0}})
    # An end exactly at "now" counts as past.
    assert quick(state, job("t", {"cpu": 2 * P}), 20.0) == (
        "t", 20.0, {"n1": {"cpu": 2 * P}}, {"n1": {"cpu": 0}})


def test_a_gang_frees_its_nodes_in_task_order(monkeypatch: pytest.MonkeyPatch) -> None:
    state = nodes(3)
    state.start(job("a", {"cpu": 2 * P}, count=3),
                [TaskPlacement("n2", {"cpu": 2 * P}), TaskPlacement("n0", {"cpu": 2 * P}),
                 TaskPlacement("n1", {"cpu": 2 * P})], 0.0, 10.0)
    no_sums(state, monkeypatch)
    assert quick(state, job("t", {"cpu": 2 * P}), 50.0) == (
        "t", 50.0, {"n2": {"cpu": 2 * P}}, {"n2": {"cpu": 0}})


def test_two_tasks_of_one_job_on_a_node_both_free(monkeypatch: pytest.MonkeyPatch) -> None:
    state = nodes(2)
    state.start(job("a", {"cpu": P}, count=2),
                [TaskPlacement("n1", {"cpu": P}), TaskPlacement("n1", {"cpu": P})], 0.0, 10.0)
    hold(state, "b", ["n0"], 0.0, 10.0)
    hold(state, "c", ["n0"], 0.0, None)
    no_sums(state, monkeypatch)
    assert quick(state, job("t", {"cpu": 2 * P}), 50.0) == (
        "t", 50.0, {"n1": {"cpu": 2 * P}}, {"n1": {"cpu": 0}})


def test_when_no_node_freed_now_fits_the_later_instants_answer() -> None:
    state = nodes(2)
    hold(state, "a", ["n0"], 0.0, 10.0)
    hold(state, "z", ["n0"], 0.0, 90.0)
    hold(state, "b", ["n1"], 0.0, 70.0, cpu=2 * P)
    assert quick(state, job("t", {"cpu": 2 * P}), 50.0) == (
        "t", 70.0, {"n1": {"cpu": 2 * P}}, {"n1": {"cpu": 0}})


def test_the_walk_gives_up_after_its_reads_and_the_scan_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Ten nodes freed now where the head does not fit, then one where it does.
    state = nodes(11)
    for i in range(10):
        hold(state, f"a{i}", [f"n{i}"], 0.0, 10.0)
        hold(state, f"z{i}", [f"n{i}"], 0.0, None)
    hold(state, "b", ["n10"], 0.0, 10.0, cpu=2 * P)
    want = ("t", 50.0, {"n10": {"cpu": 2 * P}}, {"n10": {"cpu": 0}})
    reads: list[float] = []
    sums = state.past_estimate
    monkeypatch.setattr(state, "past_estimate", lambda now: reads.append(now) or sums(now))
    assert quick(state, job("t", {"cpu": 2 * P}), 50.0) == want
    assert reads == []
    monkeypatch.setattr(backfill, "_WALK_READS", 20)  # 10 jobs and 10 nodes' 2 each: over
    assert quick(state, job("u", {"cpu": 2 * P}), 50.0) == (
        "u", *want[1:])  # type: ignore[index]
    assert reads == [50.0]


def test_past_ids_move_with_now_and_with_starts_and_ends() -> None:
    state = nodes(3)
    hold(state, "b", ["n0"], 0.0, 50.0)
    hold(state, "a", ["n0"], 10.0, 50.0)
    hold(state, "c", ["n1"], 0.0, None)
    assert list(state.past_ids(49.5)) == []
    assert list(state.past_ids(50.0)) == ["b"]  # an end at now counts
    assert list(state.past_ids(50.0)) == ["b"]  # and only once
    assert list(state.past_ids(60.0)) == ["a", "b"]
    assert list(state.past_ids(59.0)) == ["b"]  # earlier: starts over
    assert list(state.past_ids(-math.inf)) == []
    assert list(state.past_ids(60.0)) == ["a", "b"]
    hold(state, "d", ["n2"], 0.0, 60.0)  # starts already past
    hold(state, "e", ["n2"], 0.0, 61.0)
    assert list(state.past_ids(60.0)) == ["a", "b", "d"]
    state.finish("a")
    mark = state.mark()
    state.finish("b")
    assert list(state.past_ids(60.0)) == ["d"]
    state.rollback(mark)
    assert list(state.past_ids(60.0)) == ["b", "d"]
    state.reestimate("d", 100.0)
    assert list(state.past_ids(61.0)) == ["b", "e"]


# -- properties ------------------------------------------------------------------

# (operation, job number, node, time, estimate or None, read after)
steps = st.lists(
    st.tuples(
        st.sampled_from(["start", "finish", "reestimate", "rollback"]),
        st.integers(0, 9),
        st.integers(0, 3),
        st.integers(0, 30).map(float),
        st.one_of(st.none(), st.integers(0, 20).map(float)),
        st.booleans(),
    ),
    max_size=50,
)


@settings(max_examples=200, deadline=None)
@given(steps)
def test_past_ids_are_the_running_jobs_past_their_estimate(
    ops: list[tuple[str, int, int, float, float | None, bool]],
) -> None:
    state = nodes(4, cpu=20)
    for op, n, node, t, est, read in ops:
        job_id = f"j{n}"
        if op == "start" and job_id not in state.running:
            hold(state, job_id, [f"n{node}"], t, est, cpu=1)
        elif op == "finish" and job_id in state.running:
            state.finish(job_id)
        elif op == "reestimate" and job_id in state.running:
            state.reestimate(job_id, t + 1.0)
        elif op == "rollback":
            mark = state.mark()
            other = f"j{(n + 1) % 10}"
            if other not in state.running:
                hold(state, other, [f"n{node}"], t, est, cpu=1)
            if job_id in state.running:
                state.finish(job_id)
            state.rollback(mark)
        if read:
            assert list(state.past_ids(t)) == past_ids_recounted(state, t)
    for t in (0.0, 15.0, 40.0):
        assert list(state.past_ids(t)) == past_ids_recounted(state, t)
