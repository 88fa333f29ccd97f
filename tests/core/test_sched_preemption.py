"""The preemption planner and its use in the cycle."""

from __future__ import annotations

from apportion.core.model import Node
from apportion.core.scheduling import (
    ClusterState,
    SchedulerConfig,
    TaskPlacement,
    job,
    schedule_cycle,
)

P = 1000


def running(state: ClusterState, job_id: str, node: str, cpu: int, prio: int, start: float,
            preemptible: bool = True, est: float | None = None) -> None:
    j = job(job_id, {"cpu": cpu}, priority=prio, preemptible=preemptible)
    state.start(j, [TaskPlacement(node, {"cpu": cpu})], start, est)


def cfg() -> SchedulerConfig:
    return SchedulerConfig(strategy="priority", backfill="easy")


def test_evicts_the_cheapest_sufficient_set() -> None:
    state = ClusterState([Node("a", {"cpu": 4 * P}), Node("b", {"cpu": 4 * P})])
    running(state, "a-low1", "a", 2 * P, 1, 0.0)
    running(state, "a-low2", "a", 2 * P, 1, 0.0)
    running(state, "b-low", "b", 3 * P, 2, 0.0)
    running(state, "b-tiny", "b", P, 0, 50.0)
    urgent = job("urgent", {"cpu": 3 * P}, priority=10, submit_time=90)
    r = schedule_cycle(state, [urgent], 100.0, cfg())
    # On a two victims (prio 1, 1); on b one victim suffices? b-tiny frees 1 -> 1+0 free;
    # b-low frees 3 -> fits with one victim of priority 2: fewest victims wins.
    assert [(p.victim, p.by) for p in r.preemptions] == [("b-low", "urgent")]
    assert r.placements[0].tasks[0].node == "b"
    assert r.placements[0].preempted == ("b-low",)
    assert "b-low" not in state.running


def test_never_evicts_equal_or_higher_priority_or_non_preemptible() -> None:
    state = ClusterState([Node("a", {"cpu": 2 * P})])
    running(state, "same", "a", P, 5, 0.0)
    running(state, "pinned", "a", P, 1, 0.0, preemptible=False)
    r = schedule_cycle(state, [job("j", {"cpu": 2 * P}, priority=5)], 10.0, cfg())
    assert r.preemptions == ()
    assert "j" in r.unplaced


def test_waits_when_a_known_end_comes_sooner_than_eviction() -> None:
    state = ClusterState([Node("a", {"cpu": 2 * P})])
    running(state, "ending", "a", 2 * P, 0, 0.0, est=105.0)
    r = schedule_cycle(state, [job("j", {"cpu": 2 * P}, priority=9)], 100.0, cfg())
    assert r.preemptions == ()
    assert [(v.job_id, v.start) for v in r.reservations] == [("j", 105.0)]
    # With the end far away it evicts.
    state2 = ClusterState([Node("a", {"cpu": 2 * P})])
    running(state2, "ending", "a", 2 * P, 0, 0.0, est=5000.0)
    r2 = schedule_cycle(state2, [job("j", {"cpu": 2 * P}, priority=9)], 100.0, cfg())
    assert [p.victim for p in r2.preemptions] == ["ending"]


def test_a_gang_victim_is_evicted_whole() -> None:
    state = ClusterState([Node(n, {"cpu": P}) for n in ("a", "b", "c")])
    gang = job("gang", {"cpu": P}, count=2, priority=0, preemptible=True)
    state.start(gang, [TaskPlacement("a", {"cpu": P}), TaskPlacement("b", {"cpu": P})], 0.0)
    running(state, "solo", "c", P, 0, 0.0)
    r = schedule_cycle(state, [job("j", {"cpu": P}, priority=3)], 10.0, cfg())
    assert [p.victim for p in r.preemptions] == ["solo"]
    r = schedule_cycle(state, [job("k", {"cpu": P}, count=2, priority=3)], 10.0, cfg())
    assert [p.victim for p in r.preemptions] == ["gang"]
    assert state.free_total() == {"cpu": 0}


def test_multi_task_job_reprieves_victims_it_does_not_need() -> None:
    state = ClusterState([Node(n, {"cpu": 2 * P}) for n in ("a", "b")])
    running(state, "v1", "a", 2 * P, 0, 0.0)   # cheapest (prio 0, earliest key)
    running(state, "v2", "b", P, 1, 0.0)
    running(state, "v3", "b", P, 1, 5.0)
    r = schedule_cycle(state, [job("j", {"cpu": P}, count=2, priority=5)], 10.0, cfg())
    assert sorted(p.victim for p in r.preemptions) == ["v1"]
