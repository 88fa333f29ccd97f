"""The preemption planner and its use in the cycle."""

from __future__ import annotations

from apportion.core.model import Node
from apportion.core.scheduling import (
    STRATEGIES,
    ClusterState,
    SchedulerConfig,
    TaskPlacement,
    job,
    schedule_cycle,
)
from apportion.core.scheduling.engine import Placer
from apportion.core.scheduling.preemption import (
    PreemptionPlan,
    eligible,
    plan,
    plan_cost,
    victim_key,
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


def test_a_job_started_in_this_cycle_is_not_evicted_in_it() -> None:
    # FIFO places the low job first; the urgent one then evicts the older
    # job, not the one just started (which lost no run time, so it would
    # be the cheapest, and one result would both start and evict it).
    state = ClusterState([Node("n1", {"cpu": P}), Node("n2", {"cpu": P})])
    running(state, "old", "n1", P, 0, 0.0)
    new = job("new", {"cpu": P}, priority=0, preemptible=True, submit_time=1.0)
    urgent = job("urgent", {"cpu": P}, priority=10, submit_time=2.0)
    r = schedule_cycle(state, [new, urgent], 5.0, SchedulerConfig(strategy="fifo", backfill="none"))
    assert [(p.job_id, p.tasks[0].node) for p in r.placements] == [("new", "n2"), ("urgent", "n1")]
    assert [(p.victim, p.by) for p in r.preemptions] == [("old", "urgent")]
    assert sorted(state.running) == ["new", "urgent"]


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


# -- the planner on its own (the cycle asks it only when a victim is eligible) --


def planner(state: ClusterState) -> Placer:
    return Placer(state, STRATEGIES["priority"].options)


def test_eligible_victims_are_preemptible_and_of_strictly_lower_priority() -> None:
    state = ClusterState([Node("a", {"cpu": 4 * P})])
    running(state, "low", "a", P, 1, 0.0)
    running(state, "same", "a", P, 5, 0.0)
    running(state, "higher", "a", P, 7, 0.0)
    running(state, "pinned", "a", P, 1, 0.0, preemptible=False)
    assert [rj.job.id for rj in eligible(state, job("j", {"cpu": P}, priority=5))] == ["low"]
    # Nothing eligible: no plan, even where evicting "same" would make room.
    state2 = ClusterState([Node("a", {"cpu": 3 * P})])
    running(state2, "same", "a", 2 * P, 5, 0.0)
    running(state2, "pinned", "a", P, 1, 0.0, preemptible=False)
    assert plan(state2, planner(state2), job("j", {"cpu": P}, priority=5), 10.0) is None


def test_victim_key_and_plan_cost_count_run_time_lost_per_task() -> None:
    state = ClusterState([Node("a", {"cpu": 4 * P})])
    gang = job("gang", {"cpu": P}, count=2, priority=3, preemptible=True)
    state.start(gang, [TaskPlacement("a", {"cpu": P}, {}, 2)], 40.0)
    running(state, "solo", "a", P, 1, 70.0)
    g, s = state.running["gang"], state.running["solo"]
    assert victim_key(g, 100.0) == (3, 120.0, "gang")
    assert victim_key(s, 100.0) == (1, 30.0, "solo")
    assert plan_cost([g, s], 100.0) == (2, 3, 4, 150.0)
    assert plan_cost([], 100.0) == (0, 0, 0, 0)


def test_per_node_plan_gives_back_the_dearest_victim_first() -> None:
    # Greedy takes v1, v2, v3 (cheapest first) to free 3P; then giving back
    # v3 leaves too little, v2 is not needed, v1 is: {v1, v3}, not {v2, v3}.
    state = ClusterState([Node("a", {"cpu": 4 * P})])
    running(state, "v1", "a", P, 0, 0.0)
    running(state, "v2", "a", P, 1, 0.0)
    running(state, "v3", "a", 2 * P, 2, 0.0)
    chosen = plan(state, planner(state), job("j", {"cpu": 3 * P}, priority=5), 10.0)
    assert chosen == PreemptionPlan("j", ("v1", "v3"), (2, 2, 2, 20.0))
    assert sorted(state.running) == ["v1", "v2", "v3"]  # the planner rolls back


def test_per_node_plan_goes_on_past_a_node_without_one() -> None:
    state = ClusterState([Node("a", {"cpu": 2 * P}), Node("b", {"cpu": 2 * P})])
    running(state, "v1", "a", P, 0, 0.0)
    running(state, "kept", "a", P, 1, 0.0, preemptible=False)
    running(state, "v2", "b", 2 * P, 1, 0.0)
    chosen = plan(state, planner(state), job("j", {"cpu": 2 * P}, priority=5), 10.0)
    assert chosen == PreemptionPlan("j", ("v2",), (1, 1, 1, 10.0))


def test_per_node_plan_keeps_the_first_node_on_equal_cost() -> None:
    state = ClusterState([Node("a", {"cpu": 2 * P}), Node("b", {"cpu": 2 * P})])
    running(state, "vb", "b", 2 * P, 1, 0.0)
    running(state, "va", "a", 2 * P, 1, 0.0)
    chosen = plan(state, planner(state), job("j", {"cpu": 2 * P}, priority=5), 10.0)
    assert chosen == PreemptionPlan("j", ("va",), (1, 1, 1, 10.0))


def test_cluster_wide_plan_gives_back_a_victim_it_does_not_need() -> None:
    # v1 (cheapest) frees P on a, too little; v2 frees 2P on b, enough alone.
    state = ClusterState([Node("a", {"cpu": 2 * P}), Node("b", {"cpu": 2 * P})])
    running(state, "v1", "a", P, 0, 0.0)
    running(state, "kept", "a", P, 9, 0.0, preemptible=False)
    running(state, "v2", "b", 2 * P, 1, 0.0)
    chosen = plan(state, planner(state), job("j", {"cpu": P}, count=2, priority=5), 10.0)
    assert chosen == PreemptionPlan("j", ("v2",), (1, 1, 1, 10.0))


def test_cluster_wide_plan_needs_the_job_to_fit_not_only_the_total() -> None:
    # Evicting both victims frees 4P in all, but no two nodes hold 2P each.
    state = ClusterState([Node(n, {"cpu": 2 * P}) for n in ("a", "b", "c")])
    running(state, "ka", "a", P, 9, 0.0, preemptible=False)
    running(state, "kb", "b", P, 9, 0.0, preemptible=False)
    running(state, "v1", "c", P, 0, 0.0)
    running(state, "v2", "c", P, 1, 0.0)
    assert state.free_total() == {"cpu": 2 * P}
    assert plan(state, planner(state), job("j", {"cpu": 2 * P}, count=2, priority=5), 10.0) is None
