"""Queue policies' values and the strategy lookup, with literal numbers:
what a mutation run (docs/testing.md) found the placement tests let through."""

from __future__ import annotations

import pytest

from apportion.core.errors import InvalidInput
from apportion.core.model import Node
from apportion.core.scheduling import ClusterState, Queue, TaskPlacement, job
from apportion.core.scheduling.policies import (
    STRATEGIES,
    EarliestDeadline,
    FairShare,
    OrderContext,
    effective_priority,
    strategy,
)


def context(now: float = 100.0, queues: dict[str, Queue] | None = None) -> OrderContext:
    state = ClusterState([Node("n0", {"cpu": 8000})])
    return OrderContext(now, queues or {}, state, lambda j: None, aging_rate=0.5)


def test_an_unknown_strategy_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(InvalidInput) as info:
        strategy("nope")
    assert info.value.message == ("strategy: unknown 'nope'; use one of " + ", ".join(STRATEGIES))
    assert ", ".join(STRATEGIES).startswith("fifo, priority, fairshare")
    assert info.value.data == {"field": "strategy"}


def test_aging_adds_the_rate_per_second_waited_and_nothing_before_submission() -> None:
    ctx = context(now=100.0)
    assert effective_priority(job("now", {"cpu": 1}, priority=3, submit_time=100.0), ctx) == 3.0
    assert effective_priority(job("old", {"cpu": 1}, priority=3, submit_time=90.0), ctx) == 8.0
    assert effective_priority(job("new", {"cpu": 1}, priority=3, submit_time=110.0), ctx) == 3.0


def test_earliest_deadline_first_then_jobs_without_one_in_fifo_order() -> None:
    jobs = [
        job("late", {"cpu": 1}, submit_time=1.0, deadline=50.0),
        job("soon", {"cpu": 1}, submit_time=2.0, deadline=10.0),
        job("none", {"cpu": 1}, submit_time=0.0),
    ]
    assert [j.id for j in EarliestDeadline().order(jobs, context())] == ["soon", "late", "none"]


@pytest.mark.parametrize(
    ("weight", "share"),
    [(2.0, 0.125), (0.5, 0.5), (1.0, 0.25), (0.0, 0.25)],  # weight 0 counts as 1
)
def test_fair_share_is_the_dominant_share_over_the_weight(weight: float, share: float) -> None:
    used = {"cpu": 2000, "memory": 1}
    cap = {"cpu": 8000, "memory": 100}
    assert FairShare._share(used, cap, Queue("q", weight=weight)) == share


def test_fair_share_interleaves_queues_by_weight() -> None:
    # a weighs 3: its first three jobs together hold a share of 3/8 / 3, the
    # same as b's first job alone (1/8), so a's second and third go before b's
    # second.
    queues = {"a": Queue("a", weight=3.0), "b": Queue("b", weight=1.0)}
    jobs = [
        job(f"{q}{i}", {"cpu": 1000}, queue=q, submit_time=float(i))
        for q in "ab"
        for i in (1, 2, 3)
    ]
    order = FairShare().order(jobs, context(queues=queues))
    assert [j.id for j in order] == ["a1", "b1", "a2", "a3", "b2", "b3"]


def test_fair_share_counts_a_queues_use_from_zero() -> None:
    # b runs 1000 of 8000 cpu (share 1/8); a runs nothing. After a1, a holds
    # exactly 1/8 too, and the tie goes to a by name: a2 before b1.
    ctx = context()
    ctx.state.start(job("run", {"cpu": 1000}, queue="b"), [TaskPlacement("n0", {"cpu": 1000})], 0.0)
    jobs = [
        job("a1", {"cpu": 1000}, queue="a", submit_time=1.0),
        job("a2", {"cpu": 1000}, queue="a", submit_time=2.0),
        job("b1", {"cpu": 1000}, queue="b", submit_time=0.0),
    ]
    assert [j.id for j in FairShare().order(jobs, ctx)] == ["a1", "a2", "b1"]
