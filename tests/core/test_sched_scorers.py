"""Score plugins decide between feasible nodes as the strategy says."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from apportion.core.labels import parse_selector
from apportion.core.model import Device, Node
from apportion.core.scheduling import (
    Affinity,
    ClusterState,
    SchedulerConfig,
    TaskPlacement,
    job,
    schedule_cycle,
)
from apportion.core.scheduling.framework import Placer
from apportion.core.scheduling.interface import Candidate, PlaceContext, PlaceOptions
from apportion.core.scheduling.scorers import SCORERS

GI = 2**30


def three_nodes() -> ClusterState:
    state = ClusterState([Node(f"n{i}", {"cpu": 8000, "memory": 32 * GI}) for i in range(3)])
    filler = job("filler", {"cpu": 2000})
    state.start(filler, [TaskPlacement("n1", {"cpu": 2000})], 0.0)
    return state


def place(state: ClusterState, strategy: str, request: dict[str, int]) -> str:
    r = schedule_cycle(state, [job("x", request)], 0.0, SchedulerConfig(strategy=strategy))
    return r.placements[0].tasks[0].node


def test_binpack_takes_the_most_allocated_node() -> None:
    assert place(three_nodes(), "binpack", {"cpu": 1000}) == "n1"


def test_spread_takes_the_least_allocated_node() -> None:
    assert place(three_nodes(), "spread", {"cpu": 1000}) in ("n0", "n2")


def test_spread_puts_a_group_one_task_per_node() -> None:
    state = ClusterState([Node(f"n{i}", {"cpu": 8000}) for i in range(3)])
    r = schedule_cycle(
        state, [job("g", {"cpu": 1000}, count=3)], 0.0, SchedulerConfig(strategy="spread")
    )
    assert sorted(t.node for t in r.placements[0].tasks) == ["n0", "n1", "n2"]


def test_binpack_puts_a_group_on_as_few_nodes_as_fit() -> None:
    state = ClusterState([Node(f"n{i}", {"cpu": 8000}) for i in range(3)])
    r = schedule_cycle(
        state, [job("g", {"cpu": 1000}, count=3)], 0.0, SchedulerConfig(strategy="binpack")
    )
    assert [(t.node, t.count) for t in r.placements[0].tasks] == [("n0", 3)]


def test_fitness_keeps_gpu_nodes_for_gpu_jobs() -> None:
    gpus = tuple(Device(f"GPU-{k}", "A100") for k in range(4))
    state = ClusterState(
        [
            Node("gpu", {"cpu": 8000, "memory": 32 * GI}, devices={"gpu": gpus}),
            Node("cpu", {"cpu": 8000, "memory": 32 * GI}),
        ]
    )
    assert place(state, "fifo", {"cpu": 2000}) == "cpu"


def test_cost_prefers_the_cheapest_node() -> None:
    state = ClusterState(
        [
            Node("dear", {"cpu": 8000}, labels={"cost": "3.5"}),
            Node("cheap", {"cpu": 8000}, labels={"cost": "0.4"}),
            Node("mid", {"cpu": 8000}, labels={"cost": "1.0"}),
        ]
    )
    assert place(state, "cost", {"cpu": 1000}) == "cheap"


def test_topology_keeps_a_gang_in_one_zone() -> None:
    state = ClusterState(
        [Node(f"{z}{i}", {"cpu": 2000}, labels={"zone": z}) for z in ("a", "b") for i in range(3)]
    )
    blocker = job("blk", {"cpu": 1000})
    state.start(blocker, [TaskPlacement("b0", {"cpu": 1000})], 0.0)
    r = schedule_cycle(state, [job("g", {"cpu": 2000}, count=3)], 0.0, SchedulerConfig())
    zones = {t.node[0] for t in r.placements[0].tasks}
    assert len(zones) == 1


# -- each scorer's value, so that a scorer returning a constant fails ---------
#
# The placement tests above pass whatever BinPack, Spread, Balanced or
# Topology return (the walk order and the other plugins pick the same node),
# so each plugin's score is checked here on hand-made candidates, and the
# placements below are chosen so that the scorer's pick differs from the
# walk order's.


def candidate(state: ClusterState, node: str, request: dict[str, int]) -> Candidate:
    """What the walk offers for one task of ``request`` on ``node``."""
    rec = state.nodes[node]
    aligned = tuple(request.get(r, 0) for r in rec.cls.resources)
    return Candidate(rec.cls, rec.free, aligned, 1, None, rec, 1)


def context(state: ClusterState, request: dict[str, int]) -> PlaceContext:
    j = job("x", request)
    return PlaceContext(j, j.tasks[0], state)


def half_used() -> ClusterState:
    """n0 idle; n1 with 4 of 8 cpus and 8 of 32 GiB in use."""
    state = ClusterState([Node(f"n{i}", {"cpu": 8000, "memory": 32 * GI}) for i in range(2)])
    state.start(
        job("f", {"cpu": 4000, "memory": 8 * GI}),
        [TaskPlacement("n1", {"cpu": 4000, "memory": 8 * GI})],
        0.0,
    )
    return state


def test_binpack_and_spread_score_the_requested_share_in_use_after_placing() -> None:
    state = half_used()
    req = {"cpu": 2000, "memory": 8 * GI}
    ctx = context(state, req)
    # n0 after: cpu 2/8, memory 8/32 -> 0.25; n1 after: cpu 6/8, memory 16/32 -> 0.625
    assert SCORERS["binpack"].score(candidate(state, "n0", req), ctx) == 0.25
    assert SCORERS["binpack"].score(candidate(state, "n1", req), ctx) == 0.625
    assert SCORERS["spread"].score(candidate(state, "n0", req), ctx) == 0.75
    assert SCORERS["spread"].score(candidate(state, "n1", req), ctx) == 0.375


def test_binpack_averages_only_the_requested_resources() -> None:
    state = half_used()
    req = {"cpu": 2000}
    ctx = context(state, req)
    assert SCORERS["binpack"].score(candidate(state, "n1", req), ctx) == 0.75
    assert SCORERS["spread"].score(candidate(state, "n1", req), ctx) == 0.25


def test_binpack_scores_zero_for_a_request_of_nothing() -> None:
    # A task may ask only for a resource the node does not report (its
    # aligned vector is then all zero).
    state = half_used()
    ctx = context(state, {"gpu": 1})
    assert SCORERS["binpack"].score(candidate(state, "n1", {}), ctx) == 0.0


def test_balanced_scores_one_minus_the_spread_of_shares() -> None:
    state = half_used()
    req = {"cpu": 2000}
    ctx = context(state, req)
    # n0 after: cpu 2/8, memory 0/32 -> 1 - 0.25; n1 after: cpu 6/8, memory 8/32 -> 1 - 0.5
    assert SCORERS["balanced"].score(candidate(state, "n0", req), ctx) == 0.75
    assert SCORERS["balanced"].score(candidate(state, "n1", req), ctx) == 0.5
    even = {"cpu": 4000, "memory": 16 * GI}
    assert SCORERS["balanced"].score(candidate(state, "n0", even), context(state, even)) == 1.0


def test_balanced_scores_one_on_a_node_of_one_resource() -> None:
    state = ClusterState([Node("n0", {"cpu": 8000})])
    req = {"cpu": 2000}
    assert SCORERS["balanced"].score(candidate(state, "n0", req), context(state, req)) == 1.0


def test_spread_strategy_takes_the_balanced_node_when_spread_ties() -> None:
    # Both nodes end with half their cpu in use (spread ties at 0.5); on n1
    # memory is half used too, on n0 idle: balanced (weight 0.5) picks n1,
    # where the walk's order and the name both pick n0.
    state = ClusterState([Node(f"n{i}", {"cpu": 8000, "memory": 32 * GI}) for i in range(2)])
    state.start(job("f", {"memory": 16 * GI}), [TaskPlacement("n1", {"memory": 16 * GI})], 0.0)
    assert place(state, "spread", {"cpu": 4000}) == "n1"


def zoned() -> ClusterState:
    return ClusterState(
        [
            Node("a0", {"cpu": 8000}, labels={"facility": "f1", "zone": "a"}),
            Node("b0", {"cpu": 8000}, labels={"facility": "f1", "zone": "b"}),
            Node("c0", {"cpu": 8000}, labels={"facility": "f2", "zone": "a"}),
        ]
    )


def test_topology_scores_the_share_of_the_gang_placed_in_the_zone() -> None:
    state = zoned()
    req = {"cpu": 1000}
    ctx = context(state, req)
    ctx.placed = 4
    ctx.zones = {("f1", "a"): 1, ("f1", "b"): 3}
    assert SCORERS["topology"].score(candidate(state, "a0", req), ctx) == 0.25
    assert SCORERS["topology"].score(candidate(state, "b0", req), ctx) == 0.75
    # The same zone name in another facility is another place.
    assert SCORERS["topology"].score(candidate(state, "c0", req), ctx) == 0.0


def test_topology_scores_one_half_before_the_first_task() -> None:
    state = zoned()
    req = {"cpu": 1000}
    assert SCORERS["topology"].score(candidate(state, "b0", req), context(state, req)) == 0.5


def test_topology_applies_to_gangs_only() -> None:
    state = zoned()
    assert not SCORERS["topology"].applies(job("one", {"cpu": 1}), state)
    assert SCORERS["topology"].applies(job("two", {"cpu": 1}, count=2), state)


def test_topology_follows_the_gang_to_an_idle_node_in_its_zone() -> None:
    # The gang's first task takes b0, the fullest node. For the second, a0 is
    # fuller than b1 (bin-pack, fitness and the tight-fit walk prefer it, and
    # so does its name), but topology keeps the gang in zone b.
    state = ClusterState(
        [
            Node("a0", {"cpu": 4000}, labels={"zone": "a"}),
            Node("b0", {"cpu": 4000}, labels={"zone": "b"}),
            Node("b1", {"cpu": 4000}, labels={"zone": "b"}),
        ]
    )
    for n, used in (("a0", 500), ("b0", 1000)):
        state.start(job(f"blk-{n}", {"cpu": used}), [TaskPlacement(n, {"cpu": used})], 0.0)
    r = schedule_cycle(state, [job("g", {"cpu": 3000}, count=2)], 0.0, SchedulerConfig())
    assert [t.node for t in r.placements[0].tasks] == ["b0", "b1"]


def test_fitness_scores_what_the_node_keeps_free_over_all_its_resources() -> None:
    state = half_used()
    req = {"cpu": 2000}
    ctx = context(state, req)
    # n0 keeps cpu 6/8 and memory 32/32 free -> 1 - (0.75 + 1) / 2;
    # n1 keeps cpu 2/8 and memory 24/32 -> 1 - (0.25 + 0.75) / 2
    assert SCORERS["fitness"].score(candidate(state, "n0", req), ctx) == 0.125
    assert SCORERS["fitness"].score(candidate(state, "n1", req), ctx) == 0.5


def test_a_resource_of_capacity_zero_is_left_out_of_the_scores() -> None:
    # No task can ask for it (nothing of it is free): it has no share, as
    # Kubernetes' NodeResourcesFit leaves out resources with zero
    # allocatable; before, fitness and balanced divided by it.
    state = ClusterState([Node("z", {"cpu": 4000, "gpu": 0}), Node("y", {"cpu": 8000, "gpu": 0}),
                          Node("m", {"cpu": 4000, "gpu": 0, "memory": 8 * GI}),
                          Node("g", {"gpu": 0})])
    req = {"cpu": 1000}
    ctx = context(state, req)
    assert SCORERS["fitness"].score(candidate(state, "z", req), ctx) == 0.25  # 1 - 3/4
    assert SCORERS["fitness"].score(candidate(state, "y", req), ctx) == 0.125  # 1 - 7/8
    assert SCORERS["fitness"].score(candidate(state, "m", req), ctx) == 0.125  # 1 - (3/4 + 1)/2
    assert SCORERS["fitness"].score(candidate(state, "g", req), ctx) == 1.0  # nothing to keep
    assert SCORERS["balanced"].score(candidate(state, "z", req), ctx) == 1.0  # one share
    assert SCORERS["balanced"].score(candidate(state, "m", req), ctx) == 0.75  # 1 - (1/4 - 0)
    assert SCORERS["binpack"].score(candidate(state, "z", req), ctx) == 0.25
    for name, node in [("fitness", "z"), ("balanced", "z"), ("binpack", "z"), ("spread", "y")]:
        placed = Placer(state, PlaceOptions(((SCORERS[name], 1.0),), limit=8)).place(
            job(name, {"cpu": 1})).tasks
        assert [t.node for t in placed or ()] == [node], name


def priced() -> ClusterState:
    return ClusterState(
        [
            Node("dear", {"cpu": 8000}, labels={"cost": "3.5"}),
            Node("cheap", {"cpu": 8000}, labels={"cost": "0.5"}),
            Node("mid", {"cpu": 8000}, labels={"cost": "1.25"}),
            Node("free", {"cpu": 8000}),
        ]
    )


def test_cost_scores_the_place_within_the_clusters_range_of_costs() -> None:
    state = priced()
    req = {"cpu": 1000}
    ctx = context(state, req)
    cost = SCORERS["cost"]
    assert cost.score(candidate(state, "cheap", req), ctx) == 1.0
    assert cost.score(candidate(state, "dear", req), ctx) == 0.0
    assert cost.score(candidate(state, "mid", req), ctx) == 0.75
    # No cost label: the middle, neither preferred nor avoided.
    assert cost.score(candidate(state, "free", req), ctx) == 0.5


def test_cost_range_forgets_a_removed_node() -> None:
    state = priced()
    state.remove_node("dear")
    req = {"cpu": 1000}
    assert SCORERS["cost"].score(candidate(state, "mid", req), context(state, req)) == 0.0


def test_cost_scores_one_when_every_priced_node_costs_the_same() -> None:
    state = ClusterState(
        [Node(f"n{i}", {"cpu": 8000}, labels={"cost": "2"}) for i in range(2)]
        + [Node("free", {"cpu": 8000})]
    )
    req = {"cpu": 1000}
    assert SCORERS["cost"].score(candidate(state, "n1", req), context(state, req)) == 1.0


def test_topology_counts_nodes_without_zone_labels_as_one_place() -> None:
    state = ClusterState([Node(f"n{i}", {"cpu": 8000}) for i in range(2)])
    req = {"cpu": 1000}
    ctx = context(state, req)
    ctx.placed = 2
    ctx.zones = {("", ""): 2}
    assert SCORERS["topology"].score(candidate(state, "n1", req), ctx) == 1.0


def test_only_job_affinity_scores_per_node_and_every_plugin_says_when_it_applies() -> None:
    # per_node: only a preferred term about the jobs on a node makes two nodes
    # of one class and free vector score differently.
    state = zoned()
    plain = job("p", {"cpu": 1})
    to_jobs = job("j", {"cpu": 1}, affinity=(Affinity(parse_selector("app=db"), target="job"),))
    away = job("a", {"cpu": 1}, anti_affinity=(Affinity(parse_selector("app=db"), target="job"),))
    required = job(
        "r", {"cpu": 1}, affinity=(Affinity(parse_selector("app=db"), target="job", required=True),)
    )
    to_nodes = job("n", {"cpu": 1}, affinity=(Affinity(parse_selector("zone=a")),))
    for name in ("binpack", "spread", "balanced", "fitness", "cost", "topology"):
        assert not SCORERS[name].per_node(to_jobs), name
        if name != "topology":
            assert SCORERS[name].applies(plain, state), name
    affinity = SCORERS["affinity"]
    assert [affinity.per_node(j) for j in (plain, to_jobs, away, required, to_nodes)] == [
        False,
        True,
        True,
        False,
        False,
    ]
    assert [affinity.applies(j, state) for j in (plain, to_jobs, away, required, to_nodes)] == [
        False,
        True,
        True,
        False,
        True,
    ]


def affine_state() -> ClusterState:
    """n0 in zone a with an hdd, running the job being placed (x); n1 in zone
    b running db."""
    state = ClusterState(
        [
            Node("n0", {"cpu": 8000}, labels={"zone": "a", "disk": "hdd"}),
            Node("n1", {"cpu": 8000}, labels={"zone": "b"}),
        ]
    )
    state.start(
        job("db", {"cpu": 1000}, labels={"app": "db"}), [TaskPlacement("n1", {"cpu": 1000})], 0.0
    )
    state.start(
        job("x", {"cpu": 1000}, labels={"app": "db"}), [TaskPlacement("n0", {"cpu": 1000})], 0.0
    )
    return state


def test_affinity_scores_the_weighted_terms_that_hold() -> None:
    state = affine_state()
    req = {"cpu": 1000}
    x = job(
        "x",
        req,
        affinity=(
            Affinity(parse_selector("zone=b"), target="job", required=True),  # not scored
            Affinity(parse_selector("zone=a"), weight=3),
            Affinity(parse_selector("app=db"), target="job", weight=2),
        ),
        anti_affinity=(Affinity(parse_selector("disk=hdd"), weight=2),),
        labels={"app": "db"},
    )
    ctx = PlaceContext(x, x.tasks[0], state)
    affinity = SCORERS["affinity"]
    # Out of 3 + 2 + 2 = 7: n0 gets zone=a (+3) and hdd (-2); x itself runs
    # there, which does not count as a db job. n1 gets the db job (+2).
    assert affinity.score(candidate(state, "n0", req), ctx) == (1 + 7) / 14
    assert affinity.score(candidate(state, "n1", req), ctx) == (2 + 7) / 14
    # A bucket of nodes cannot say which jobs it runs: job terms do not hold.
    rec = state.nodes["n1"]
    bucket = Candidate(rec.cls, rec.free, (1000,), 1, rec.bucket, None, 1)
    assert affinity.score(bucket, ctx) == 7 / 14


def test_affinity_scores_one_half_without_preferred_terms() -> None:
    state = affine_state()
    req = {"cpu": 1000}
    j = job("y", req, affinity=(Affinity(parse_selector("zone=a"), required=True),))
    ctx = PlaceContext(j, j.tasks[0], state)
    assert SCORERS["affinity"].score(candidate(state, "n0", req), ctx) == 0.5


def test_affinity_scores_zero_where_only_repelling_terms_hold() -> None:
    state = affine_state()
    req = {"cpu": 1000}
    j = job("y", req, anti_affinity=(Affinity(parse_selector("disk=hdd"), weight=4),))
    ctx = PlaceContext(j, j.tasks[0], state)
    assert SCORERS["affinity"].score(candidate(state, "n0", req), ctx) == 0.0
    # A repelling term that does not hold scores the middle, not 1.
    assert SCORERS["affinity"].score(candidate(state, "n1", req), ctx) == 0.5


@given(st.integers(1, 16), st.integers(0, 16), st.integers(1, 16))
def test_one_resource_scores_as_the_mean_over_resources(cap: int, used: int, q: int) -> None:
    # A one-resource node scores with the loop's sum and mean, to the bit.
    state = ClusterState([Node("n", {"gpu": cap})])
    cand = Candidate(state.nodes["n"].cls, (cap - min(used, cap),), (q,), 1, None,
                     state.nodes["n"], 1)
    ctx = context(state, {"gpu": q})
    c, f = cap, cap - min(used, cap)
    used_after = 0.0 + (c - f + q) / c
    assert SCORERS["binpack"].score(cand, ctx) == used_after / 1
    assert SCORERS["spread"].score(cand, ctx) == 1.0 - used_after / 1
    assert SCORERS["fitness"].score(cand, ctx) == 1.0 - (0.0 + (f - q) / c) / 1
