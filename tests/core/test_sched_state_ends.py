"""The index of expected ends files a started job only when someone reads it:
whatever mix of starts, ends, new estimates and rolled-back transactions
came between two reads, the index read is the sorted ends of the jobs
running then, and what jobs past their estimate hold is the same; it is
read by value, never by position."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from apportion.core.model import Node
from apportion.core.scheduling import ClusterState, TaskPlacement, job
from sched_support import past_recounted

NODES = 4

# (operation, job number, node, time, estimate or None, read the index after)
steps = st.lists(
    st.tuples(
        st.sampled_from(["start", "finish", "reestimate", "rollback"]),
        st.integers(0, 7),
        st.integers(0, NODES - 1),
        st.integers(0, 20).map(float),
        st.one_of(st.none(), st.integers(0, 20).map(float)),
        st.booleans(),
    ),
    max_size=40,
)


def _want(state: ClusterState) -> list[tuple[float, str]]:
    return sorted((rj.start + rj.estimate, j) for j, rj in state.running.items()
                  if rj.estimate is not None)


def _start(state: ClusterState, n: int, node: int, t: float, est: float | None) -> None:
    job_id = f"j{n}"
    if job_id not in state.running:
        state.start(job(job_id, {"cpu": 1}), [TaskPlacement(f"n{node}", {"cpu": 1})], t, est)


def _apply(state: ClusterState, op: str, n: int, node: int, t: float, est: float | None
           ) -> None:
    job_id = f"j{n}"
    if op == "start":
        _start(state, n, node, t, est)
    elif op == "finish":
        if job_id in state.running:
            state.finish(job_id)
    elif op == "reestimate":
        if job_id in state.running:
            state.reestimate(job_id, t + 1.0)
    else:
        # A what-if that starts one job and ends another, then is undone.
        mark = state.mark()
        _start(state, (n + 1) % 8, node, t, est)
        if job_id in state.running:
            state.finish(job_id)
        state.rollback(mark)


@settings(max_examples=200, deadline=None)
@given(steps)
def test_ends_read_at_any_point_are_the_running_jobs_ends(
    ops: list[tuple[str, int, int, float, float | None, bool]],
) -> None:
    state = ClusterState([Node(f"n{i}", {"cpu": 8}) for i in range(NODES)])
    for op, n, node, t, est, read in ops:
        _apply(state, op, n, node, t, est)
        if read:
            assert list(state.ends) == _want(state)
            assert state.past_estimate(t) == past_recounted(state, t)
            assert list(state.past_ids(t)) == sorted(j for e, j in _want(state) if e <= t)
            # Read by value only: no positional index for the next ends filed to update.
            assert not state.ends._index
    assert list(state.ends) == _want(state)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6).map(float), st.integers(0, 9)), max_size=30),
       st.integers(-1, 7).map(float), st.integers(-1, 7).map(float))
def test_passing_is_the_ends_between_two_instants(
    ends: list[tuple[float, int]], since: float, now: float
) -> None:
    # As bisect_left and islice found them before ``irange`` did.
    state = ClusterState([Node("n0", {"cpu": 100})])
    for end, n in ends:
        _start(state, n, 0, 0.0, end)
    index = state.ends
    lo = index.bisect_left((math.nextafter(since, math.inf),))
    hi = index.bisect_left((math.nextafter(now, math.inf),))
    assert state._passing(since, now) == [j for _, j in index.islice(lo, hi)]


def test_a_job_that_ends_before_a_read_is_never_filed() -> None:
    state = ClusterState([Node("n0", {"cpu": 8})])
    state.start(job("a", {"cpu": 1}), [TaskPlacement("n0", {"cpu": 1})], 0.0, 5.0)
    state.start(job("b", {"cpu": 1}), [TaskPlacement("n0", {"cpu": 1})], 0.0, 3.0)
    state.finish("a")
    assert list(state.ends) == [(3.0, "b")]
    state.finish("b")
    assert list(state.ends) == []
