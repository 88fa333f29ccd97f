"""Queue policies: FIFO, priority with aging, fair share, SJF, EDF, adaptive."""

from __future__ import annotations

from apportion.core.model import Node
from apportion.core.scheduling import (
    ClusterState,
    Queue,
    RuntimeHistory,
    SchedulerConfig,
    TaskPlacement,
    job,
    schedule_cycle,
)
from apportion.core.scheduling.policies import STRATEGIES, OrderContext, effective_priority


def ctx(state: ClusterState, now: float = 0.0, queues: dict[str, Queue] | None = None,
        aging: float = 0.0) -> OrderContext:
    return OrderContext(now, queues or {}, state, lambda j: j.runtime_estimate, aging)


def order(name: str, jobs: list, c: OrderContext) -> list[str]:  # type: ignore[type-arg]
    return [j.id for j in STRATEGIES[name].order.order(jobs, c)]


def empty() -> ClusterState:
    return ClusterState([Node("n", {"cpu": 10000, "memory": 10000})])


def test_fifo_orders_by_submit_then_id() -> None:
    jobs = [job("b", {"cpu": 1}, submit_time=5), job("a", {"cpu": 1}, submit_time=5),
            job("c", {"cpu": 1}, submit_time=1)]
    assert order("fifo", jobs, ctx(empty())) == ["c", "a", "b"]


def test_priority_ages_waiting_jobs() -> None:
    # 1 point per 100 s: a priority-0 job outranks priority-10 jobs that
    # arrive more than 1000 s after it.
    old_low = job("old", {"cpu": 1}, priority=0, submit_time=0)
    early = job("early", {"cpu": 1}, priority=10, submit_time=900)
    late = job("late", {"cpu": 1}, priority=10, submit_time=1100)
    c = ctx(empty(), now=1200.0, aging=0.01)
    assert effective_priority(old_low, c) == 12.0
    assert order("priority", [late, old_low, early], c) == ["early", "old", "late"]


def test_priority_is_clamped_to_queue_bounds() -> None:
    q = {"low": Queue("low", max_priority=5)}
    greedy = job("g", {"cpu": 1}, priority=100, queue="low", submit_time=1)
    fair = job("f", {"cpu": 1}, priority=6, submit_time=2)
    assert order("priority", [greedy, fair], ctx(empty(), queues=q)) == ["f", "g"]


def test_fairshare_interleaves_by_weighted_dominant_share() -> None:
    state = empty()
    hog = job("hog", {"cpu": 5000}, queue="a")
    state.start(hog, [TaskPlacement("n", {"cpu": 5000})], 0.0)
    jobs = [job(f"a{i}", {"cpu": 1000}, queue="a", submit_time=i) for i in range(3)]
    jobs += [job(f"b{i}", {"memory": 1000}, queue="b", submit_time=10 + i) for i in range(3)]
    # a holds 50% cpu; b holds nothing, so b goes first until it catches up.
    assert order("fairshare", jobs, ctx(state)) == ["b0", "b1", "b2", "a0", "a1", "a2"]
    weights = {"a": Queue("a", weight=10.0), "b": Queue("b")}
    assert order("fairshare", jobs, ctx(state, queues=weights))[:2] == ["b0", "a0"]


def test_sjf_and_sla_orders() -> None:
    jobs = [job("long", {"cpu": 1}, runtime_estimate=900, deadline=50, submit_time=0),
            job("short", {"cpu": 1}, runtime_estimate=10, deadline=500, submit_time=1),
            job("none", {"cpu": 1}, submit_time=2)]
    assert order("sjf", jobs, ctx(empty())) == ["short", "long", "none"]
    assert order("sla", jobs, ctx(empty())) == ["long", "short", "none"]


def test_runtime_history_learns_by_name_and_user() -> None:
    h = RuntimeHistory()
    assert h.predict(job("x", {"cpu": 1}, name="train", user="ann")) is None
    h.record(job("1", {"cpu": 1}, name="train", user="ann"), 100.0)
    h.record(job("2", {"cpu": 1}, name="train", user="ann"), 300.0)
    h.record(job("3", {"cpu": 1}, name="train", user="ann"), 500.0)
    h.record(job("4", {"cpu": 1}, name="eval", user="bob"), 10.0)
    assert h.predict(job("x", {"cpu": 1}, name="train", user="ann")) == 400.0
    assert h.predict(job("y", {"cpu": 1}, name="other", user="ann")) == 400.0
    # One run of eval is not enough evidence, nor are four runs in all.
    assert h.predict(job("z", {"cpu": 1}, name="eval")) is None
    assert h.predict(job("w", {"cpu": 1})) is None


def test_adaptive_uses_learned_estimates_when_none_given() -> None:
    state = ClusterState([Node("n", {"cpu": 1000})])
    h = RuntimeHistory()
    for i in range(2):
        h.record(job(f"q{i}", {"cpu": 1}, user="quick"), 5.0)
        h.record(job(f"s{i}", {"cpu": 1}, user="slow"), 5000.0)
    jobs = [job("s", {"cpu": 1000}, user="slow", submit_time=0),
            job("q", {"cpu": 1000}, user="quick", submit_time=1)]
    r = schedule_cycle(state, jobs, 10.0, SchedulerConfig(strategy="adaptive"), history=h)
    assert [p.job_id for p in r.placements] == ["q"]
    assert r.placements[0].estimate == 5.0
