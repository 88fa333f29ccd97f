"""``policies.fifo_again``: the FIFO order merged from the last one, over a
run of queues sharing one memo, is ``sorted`` by the FIFO key, job for job,
with jobs of equal keys and jobs queued twice among them."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from apportion.core.scheduling import job
from apportion.core.scheduling.jobs import Job
from apportion.core.scheduling.policies import fifo_again, fifo_key

POOL = [job(f"j{i % 3}", {"cpu": 1}, submit_time=float(i % 2)) for i in range(12)]
"""Twelve jobs, every key twice (jobs 0 and 6: id j0, submitted at 0)."""


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.integers(0, len(POOL) - 1), max_size=14), min_size=1, max_size=6))
def test_fifo_again_orders_as_sorted(queues: list[list[int]]) -> None:
    memo: dict[Any, Any] = {}
    for queue in queues:
        jobs = [POOL[i] for i in queue]
        got = fifo_again(jobs, memo)
        assert [id(j) for j in got] == [id(j) for j in sorted(jobs, key=fifo_key)]


def test_fifo_again_merges_the_jobs_kept_with_the_new_ones() -> None:
    memo: dict[Any, Any] = {}
    first = [job(f"a{i}", {"cpu": 1}, submit_time=float(10 - i)) for i in range(4)]
    assert [j.id for j in fifo_again(first, memo)] == ["a3", "a2", "a1", "a0"]
    later: list[Job] = [job("b", {"cpu": 1}, submit_time=8.5), first[0], first[2]]
    assert [j.id for j in fifo_again(later, memo)] == ["a2", "b", "a0"]
    # The memo holds the order given last, to merge the next queue into.
    assert [j.id for j in memo["fifo-order"][0]] == ["a2", "b", "a0"]
