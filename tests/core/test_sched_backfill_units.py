"""backfill.py function by function, with literal answers: pools, the ends
of running jobs, EASY's reservation (the one-task shortcut and the general
method, which must agree), devices, the cache, and the conservative profile.
Written for the mutants of ``backfill.py`` (docs/testing.md)."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any, cast

from apportion.core.model import Device, Node, NodeState
from apportion.core.scheduling import (
    ClusterState,
    TaskPlacement,
    TaskSpec,
    job,
    parse_constraints,
)
from apportion.core.scheduling.backfill import (
    INF,
    HeadReservation,
    Pool,
    Profile,
    _first_freed,
    _free_matching,
    _freed_devices,
    _instants,
    _single_task_reservation,
    _try_at,
    cached_easy_reservation,
    easy_reservation,
    pool_for,
    pool_reservation,
    running_ends,
    use_extra,
)
from apportion.core.scheduling.engine import Placer
from apportion.core.scheduling.freeprofile import _overdue
from apportion.core.scheduling.jobs import Affinity, Job
from apportion.core.scheduling.policies import strategy
from sched_support import P, hold, nodes


def near(selector: str, target: str = "node", required: bool = False) -> tuple[Affinity, ...]:
    return (Affinity(parse_constraints(selector).labels, target, required=required),)


def placer(state: ClusterState) -> Placer:
    return Placer(state, strategy("fifo").options)


def view(h: HeadReservation | None) -> object:
    if h is None:
        return None
    r = h.reservation
    return (r.job_id, r.start, dict(r.nodes), h.extra, h.pool, h.pool_extra)


def test_a_pool_covers_jobs_whose_tasks_are_units_of_its_one_resource() -> None:
    pool = Pool("cpu", P)
    assert pool.covers(job("j", {"cpu": 2 * P}, count=3))
    assert pool.covers(Job("j", (TaskSpec({"cpu": P}, 1), TaskSpec({"cpu": 3 * P}, 2))))
    assert not pool.covers(job("j", {"cpu": 1500}))
    assert not pool.covers(job("j", {"cpu": P, "memory": 1}))
    assert not pool.covers(job("j", {"gpu": P}))
    assert not pool.covers(Job("j", (TaskSpec({"cpu": P}, 1), TaskSpec({"cpu": 500}, 1))))


def test_pool_for_interchangeable_capacity_only() -> None:
    state = nodes(3)
    hold(state, "r", ["n0"], 0.0, 50.0)
    assert pool_for(state, job("j", {"cpu": P}, count=3)) == Pool("cpu", P)
    assert pool_for(state, job("j", {"cpu": 500})) == Pool("cpu", 500)
    assert pool_for(state, job("j", {"cpu": 2 * P})) is None  # n0 has 1 free
    assert pool_for(state, job("j", {"cpu": 3 * P})) is None  # not a unit of a node
    assert pool_for(state, job("j", {"cpu": 1500})) is None
    assert pool_for(state, job("j", {"gpu": 1})) is None  # unit 0
    assert pool_for(state, job("j", {"cpu": P, "gpu": 1})) is None
    assert pool_for(state, Job("j", (TaskSpec({"cpu": P}, 1), TaskSpec({"cpu": 2 * P}, 1)))) is None
    assert pool_for(state, job("j", {"cpu": P},
                               constraints=parse_constraints("zone=a"))) is None
    assert pool_for(state, job("j", {"cpu": P}, affinity=near("app=x"))) is None
    assert pool_for(state, job("j", {"cpu": P}, anti_affinity=near("app=x"))) is None
    # A running task smaller than the unit, even where the free amounts are whole.
    halves = nodes(2)
    halves.start(job("h", {"cpu": 500}, count=2),
                 [TaskPlacement("n0", {"cpu": 500}, count=2)], 0.0, 10.0)
    assert pool_for(halves, job("j", {"cpu": P})) is None
    assert pool_for(halves, job("j", {"cpu": 500})) == Pool("cpu", 500)


def test_pool_for_looks_at_schedulable_classes_of_one_resource_without_devices() -> None:
    mixed = ClusterState([Node("a", {"cpu": 2 * P}), Node("b", {"cpu": 4 * P})])
    assert pool_for(mixed, job("j", {"cpu": P})) is None
    mixed = ClusterState([Node("a", {"cpu": 2 * P}),
                          Node("b", {"cpu": 4 * P}, state=NodeState.CORDONED)])
    assert pool_for(mixed, job("j", {"cpu": P})) == Pool("cpu", P)
    two = ClusterState([Node("a", {"cpu": 2 * P, "memory": 4})])
    assert pool_for(two, job("j", {"cpu": P})) is None
    dev = ClusterState([Node("a", {"cpu": 2 * P}, devices={"gpu": (Device("g0"),)})])
    assert pool_for(dev, job("j", {"cpu": P})) is None


def test_pool_reservation_adds_up_the_ends_of_one_instant() -> None:
    state = nodes(3)
    hold(state, "a", ["n0", "n1"], 0.0, 50.0, cpu=2 * P)
    hold(state, "b", ["n2"], 0.0, 50.0)
    hold(state, "c", ["n2"], 0.0, 80.0)
    pool = Pool("cpu", P)
    head = job("h", {"cpu": P}, count=5)
    assert view(pool_reservation(state, pool, head, 10.0)) == (
        "h", 50.0, {}, {}, pool, 0)
    assert view(pool_reservation(state, pool, job("h", {"cpu": P}, count=6), 10.0)) == (
        "h", 80.0, {}, {}, pool, 0)
    assert view(pool_reservation(state, pool, job("h", {"cpu": P}, count=2), 10.0)) == (
        "h", 50.0, {}, {}, pool, 3 * P)
    assert pool_reservation(state, pool, job("h", {"cpu": P}, count=7), 10.0) is None
    idle = nodes(1)
    assert view(pool_reservation(idle, pool, job("h", {"cpu": P}), 10.0)) == (
        "h", 10.0, {}, {}, pool, P)


def test_running_ends_puts_the_overdue_now_by_id() -> None:
    state = nodes(4)
    hold(state, "z", ["n0"], 0.0, 40.0)
    hold(state, "y", ["n1"], 0.0, 50.0)
    hold(state, "x", ["n2"], 0.0, 60.0)
    hold(state, "w", ["n3"], 0.0, None)
    assert running_ends(state, 10.0) == [(40.0, "z"), (50.0, "y"), (60.0, "x")]
    assert running_ends(state, 50.0) == [(50.0, "y"), (50.0, "z"), (60.0, "x")]
    assert running_ends(state, 55.0) == [(55.0, "y"), (55.0, "z"), (60.0, "x")]


def both_ways(state: ClusterState, j: Job, now: float) -> object:
    """The one-task shortcut and the general method (given the ends), which
    must agree; the answer once."""
    pl = placer(state)
    quick = view(easy_reservation(state, pl, j, now))
    assert quick == view(easy_reservation(state, pl, j, now, ends=running_ends(state, now)))
    return quick


def busy_nodes() -> ClusterState:
    state = ClusterState([Node(f"n{i}", {"cpu": 2 * P}) for i in range(4)]
                         + [Node("x", {"cpu": 2 * P}, state=NodeState.CORDONED)])
    hold(state, "a", ["n0"], 0.0, 50.0)
    hold(state, "b", ["n1"], 0.0, 30.0, cpu=2 * P)
    hold(state, "c", ["n0"], 0.0, 20.0)
    state.start(job("d", {"cpu": P}, count=2),
                [TaskPlacement("n2", {"cpu": P}), TaskPlacement("n3", {"cpu": P})], 0.0, 30.0)
    hold(state, "e", ["n3"], 0.0, None)
    hold(state, "f", ["x"], 0.0, 5.0, cpu=2 * P)  # past its estimate, on a cordoned node
    return state


def test_easy_reservation_of_one_task_as_jobs_end() -> None:
    state = busy_nodes()
    two = job("t", {"cpu": 2 * P})
    # At 30 both n1 (b) and n2 (d) have 2 free: b is released first (by id).
    at30 = ("t", 30.0, {"n1": {"cpu": 2 * P}}, {"n1": {"cpu": 0}}, None, 0)
    assert both_ways(state, two, 10.0) == at30
    assert both_ways(state, two, 25.0) == at30  # c is past its estimate: ends "now"
    assert both_ways(state, two, 30.0) == at30
    assert both_ways(state, two, 35.0) == ("t", 35.0, {"n1": {"cpu": 2 * P}},
                                           {"n1": {"cpu": 0}}, None, 0)
    assert both_ways(state, job("t", {"cpu": 3 * P}), 10.0) is None
    assert both_ways(state, job("t", {"cpu": 2 * P},
                                constraints=parse_constraints("zone=a")), 10.0) is None
    one = job("t", {"cpu": P}, runtime_estimate=5)
    # One that fits now (n2) is reserved at the first instant, "now" (f is past
    # its estimate).
    assert both_ways(state, one, 10.0) == ("t", 10.0, {"n2": {"cpu": P}}, {"n2": {"cpu": 0}},
                                           None, 0)
    assert both_ways(state, job("g", {"cpu": 2 * P}, count=2), 10.0) == (
        "g", 30.0, {"n1": {"cpu": 2 * P}, "n2": {"cpu": 2 * P}},
        {"n1": {"cpu": 0}, "n2": {"cpu": 0}}, None, 0)


def test_the_shortcut_applies_to_one_task_that_waits() -> None:
    state = busy_nodes()
    pl = placer(state)
    assert _single_task_reservation(state, pl, job("t", {"cpu": 9 * P}), 10.0) == (True, None)
    assert _single_task_reservation(state, pl, job("t", {"cpu": P}), 10.0) == (False, None)
    assert _single_task_reservation(state, pl, job("t", {"cpu": P}, count=2, gang=False),
                                    10.0) == (False, None)
    for rule in ("affinity", "anti_affinity"):
        to_job = job("t", {"cpu": 2 * P}, **{rule: near("app=x", "job", required=True)})
        assert _single_task_reservation(state, pl, to_job, 10.0) == (False, None)
    liked = job("t", {"cpu": 2 * P}, anti_affinity=near("app=x", "job"))
    assert _single_task_reservation(state, pl, liked, 10.0)[0] is True
    on_node = job("t", {"cpu": 2 * P}, affinity=near("app=x", "node", required=True))
    assert _single_task_reservation(state, pl, on_node, 10.0) == (True, None)


def test_nodes_freed_at_one_instant_go_in_release_order() -> None:
    # At 30 every node frees 2; "a" releases n1 before n0, so n1 is taken.
    state = nodes(4)
    state.start(job("a", {"cpu": 2 * P}, count=2),
                [TaskPlacement("n1", {"cpu": 2 * P}), TaskPlacement("n0", {"cpu": 2 * P})],
                0.0, 30.0)
    state.start(job("d", {"cpu": P}, count=2),
                [TaskPlacement("n3", {"cpu": P}), TaskPlacement("n2", {"cpu": P})], 0.0, 30.0)
    hold(state, "z", ["n2"], 0.0, 30.0)
    hold(state, "y", ["n3"], 0.0, 30.0)
    want = ("t", 30.0, {"n1": {"cpu": 2 * P}}, {"n1": {"cpu": 0}}, None, 0)
    assert both_ways(state, job("t", {"cpu": 2 * P}), 10.0) == want
    assert _first_freed(state, state.nodes["n0"], 30.0, 10.0) == (30.0, "a", 1)
    assert _first_freed(state, state.nodes["n2"], 30.0, 10.0) == (30.0, "d", 1)
    assert _first_freed(state, state.nodes["n3"], 40.0, 40.0) == (40.0, "d", 0)
    # Against the first of the nodes looked at before: None unless earlier.
    n1 = _first_freed(state, state.nodes["n1"], 30.0, 10.0)
    assert n1 == (30.0, "a", 0)
    assert _first_freed(state, state.nodes["n0"], 30.0, 10.0, n1) is None
    assert _first_freed(state, state.nodes["n2"], 30.0, 10.0, n1) is None
    assert _first_freed(state, state.nodes["n1"], 30.0, 10.0, (30.0, "a", 1)) == n1
    assert _first_freed(state, state.nodes["n2"], 30.0, 10.0, (30.0, "z", 0)) == (30.0, "d", 1)


def test_first_freed_at_now_reads_no_job_after_the_best() -> None:
    # At "now" every end is "now": a job whose id comes after the best so far
    # cannot come first, so it is passed without reading it ("c"); the best's
    # own id is read (a gang's earlier task may be on this node).
    state = nodes(2)
    for name in ("b", "c", "a2"):
        hold(state, name, ["n0"], 0.0, 5.0, cpu=P // 2)
    read: list[str] = []

    class Counting(dict[str, Any]):
        def __getitem__(self, key: str) -> Any:
            read.append(key)
            return super().__getitem__(key)

    view = cast(ClusterState, SimpleNamespace(running=Counting(state.running)))
    assert _first_freed(view, state.nodes["n0"], 10.0, 10.0, (10.0, "b", 0)) == (10.0, "a2", 0)
    assert read == ["b", "a2"]
    read.clear()
    assert _first_freed(view, state.nodes["n0"], 10.0, 10.0) == (10.0, "a2", 0)
    assert read == ["b", "a2"]  # "c" comes after "b", the best once "b" is read


def gpu_node(name: str, *models: str) -> Node:
    return Node(name, {"cpu": 4 * P},
                devices={"gpu": tuple(Device(f"{name}g{i}", m) for i, m in enumerate(models))})


def gpu_state(t4_est: float | None, a100_est: float | None) -> ClusterState:
    state = ClusterState([gpu_node("a", "T4", "A100"), gpu_node("b", "A100", "A100")])

    def run(job_id: str, node: str, devs: tuple[str, ...], est: float | None) -> None:
        want = {"cpu": P, "gpu": len(devs)}
        state.start(job(job_id, want, runtime_estimate=est),
                    [TaskPlacement(node, want, {"gpu": devs})], 0.0, est)

    run("j1", "a", ("ag0",), t4_est)
    run("j3", "a", ("ag1",), a100_est)
    run("j2", "b", ("bg0", "bg1"), 30.0)
    return state


def test_one_task_with_device_terms_waits_for_a_matching_device() -> None:
    a100 = job("t", {"cpu": P, "gpu": 1}, constraints=parse_constraints("gpu.model=A100"))
    anyone = job("t", {"cpu": P, "gpu": 1})
    on_a = {"a": {"cpu": P, "gpu": 1}}, {"a": {"cpu": 2 * P, "gpu": 0}}, None, 0
    on_b = {"b": {"cpu": P, "gpu": 1}}, {"b": {"cpu": 3 * P, "gpu": 1}}, None, 0
    # The A100 on a frees at 20 (at "now" once past its estimate).
    for t4 in (50.0, None):
        state = gpu_state(t4, 20.0)
        assert both_ways(state, a100, 10.0) == ("t", 20.0, *on_a)
        assert both_ways(state, a100, 25.0) == ("t", 25.0, *on_a)
    # The T4 on a frees at 20, the A100s on b at 30.
    for a100_end in (50.0, None):
        state = gpu_state(20.0, a100_end)
        assert both_ways(state, a100, 10.0) == ("t", 30.0, *on_b)
        assert both_ways(state, a100, 25.0) == ("t", 30.0, *on_b)
        assert both_ways(state, anyone, 10.0) == ("t", 20.0, *on_a)
        assert both_ways(state, anyone, 25.0) == ("t", 25.0, *on_a)


def test_freed_devices_and_how_many_tasks_they_allow() -> None:
    state = gpu_state(50.0, 20.0)
    a, b = state.nodes["a"], state.nodes["b"]
    assert _freed_devices(state, a, 25.0) == {"gpu": ["ag1"]}
    assert _freed_devices(state, a, 10.0) == {"gpu": []}
    assert _freed_devices(state, b, 30.0) == {"gpu": ["bg0", "bg1"]}
    a100 = parse_constraints("gpu.model=A100")
    one, two = {"cpu": P, "gpu": 1}, {"cpu": P, "gpu": 2}
    assert _free_matching(job("t", one, constraints=a100), one, b, {"gpu": ["bg0", "bg1"]}) == 2
    assert _free_matching(job("t", two, constraints=a100), two, b, {"gpu": ["bg0", "bg1"]}) == 1
    assert _free_matching(job("t", one, constraints=a100), one, a, {"gpu": ["ag0", "ag1"]}) == 1
    assert _free_matching(job("t", one, constraints=a100), one, a, {"gpu": ["ag0"]}) == 0
    assert _free_matching(job("t", one), one, a, {}) == 0
    assert _free_matching(job("t", {"cpu": P}), {"cpu": P}, a, {}) == 1


def test_the_head_reservation_is_cached_until_something_changes() -> None:
    state = nodes(2)
    hold(state, "a", ["n0"], 0.0, 50.0, cpu=2 * P)
    hold(state, "b", ["n1"], 0.0, 80.0)
    pl = placer(state)
    odd = job("g", {"cpu": 1500})  # not a unit of the nodes: planned node by node
    on_n0 = {"n0": {"cpu": 1500}}, {"n0": {"cpu": 500}}, None, 0
    first = cached_easy_reservation(state, pl, odd, 10.0)
    assert view(first) == ("g", 50.0, *on_n0)
    assert state.cache["easy"][0] == "g" and state.cache["easy"][2:4] == (state.changes, 50.0)
    assert first is not None
    first.extra["n0"]["cpu"] = -1  # the cycle spends its copy; the cached one stays whole
    assert view(cached_easy_reservation(state, pl, odd, 10.0)) == ("g", 50.0, *on_n0)
    assert view(cached_easy_reservation(state, pl, job("g2", {"cpu": 2 * P}), 10.0)) == (
        "g2", 50.0, {"n0": {"cpu": 2 * P}}, {"n0": {"cpu": 0}}, None, 0)
    # Past the first end the answer moves with the clock.
    assert view(cached_easy_reservation(state, pl, odd, 60.0)) == ("g", 60.0, *on_n0)
    assert state.cache["easy"][3] == 60.0
    assert view(cached_easy_reservation(state, pl, odd, 70.0)) == ("g", 70.0, *on_n0)
    pooled = job("h", {"cpu": P}, count=3)
    assert view(cached_easy_reservation(state, pl, pooled, 10.0)) == (
        "h", 50.0, {}, {}, Pool("cpu", P), 0)
    assert state.cache["easy"][3] == 50.0
    state.finish("a")
    assert view(cached_easy_reservation(state, pl, pooled, 10.0)) == (
        "h", 10.0, {}, {}, Pool("cpu", P), 0)
    assert state.cache["easy"][3] == 80.0
    state.finish("b")
    assert cached_easy_reservation(state, pl, job("h", {"cpu": P}, count=5), 10.0) is None
    assert state.cache["easy"][3] == INF


def test_instants_group_the_ends_after_now() -> None:
    state = nodes(3)
    hold(state, "a", ["n0"], 0.0, 50.0)
    hold(state, "c", ["n1"], 0.0, 50.0)
    hold(state, "b", ["n2"], 0.0, 80.0)
    assert list(_instants(state.ends, 0.0)) == list(_instants(state.ends, 49.9)) == [
        (50.0, [(50.0, "a"), (50.0, "c")]), (80.0, [(80.0, "b")])]
    assert list(_instants(state.ends, 50.0)) == [(80.0, [(80.0, "b")])]
    assert list(_instants(state.ends, 80.0)) == []
    assert (_overdue(state.ends, 50.0), _overdue(state.ends, 49.0)) == (2, 0)
    # Read by value: the ends keep no positional index to update as jobs start.
    assert not state.ends._index


def test_try_at_sums_what_the_head_holds_per_node() -> None:
    state = nodes(2)
    hold(state, "a", ["n0"], 0.0, 50.0)
    found = _try_at(state, placer(state), job("g", {"cpu": P}, count=3), 7.0, ["n1"])
    assert view(found) == ("g", 7.0, {"n1": {"cpu": 2 * P}, "n0": {"cpu": P}},
                           {"n1": {"cpu": 0}, "n0": {"cpu": 0}}, None, 0)
    assert _try_at(state, placer(state), job("g", {"cpu": P}, count=4), 7.0, []) is None


def test_use_extra_takes_off_what_a_job_uses_on_reserved_nodes() -> None:
    extra = {"n0": {"cpu": 3 * P, "gpu": 1}, "n1": {"cpu": P}}
    use_extra(extra, [TaskPlacement("n0", {"cpu": P, "memory": 5}, count=2),
                      TaskPlacement("n9", {"cpu": P})])
    assert extra == {"n0": {"cpu": P, "gpu": 1}, "n1": {"cpu": P}}


def test_profile_merges_releases_at_one_instant_and_before_now() -> None:
    prof = Profile(["cpu", "gpu"], 10.0, [1, 0],
                   [(30.0, [1, 1]), (5.0, [2, 0]), (30.0, [0, 1]), (20.0, [1, 0])])
    assert prof.names == ("cpu", "gpu") and prof.pos == {"cpu": 0, "gpu": 1}
    assert prof.times == [10.0, 20.0, 30.0]
    assert prof.free == [[3, 0], [4, 0], [5, 2]]
    assert prof.vector({"gpu": 2}) == [0, 2]
    assert prof.vector({"gpu": 2, "fpga": 1}) is None


def test_profile_of_a_state_sums_its_running_jobs_ends() -> None:
    state = ClusterState([Node("m0", {"cpu": 2 * P, "memory": 8}),
                          Node("m1", {"cpu": 2 * P, "memory": 8})])
    state.start(job("x", {"cpu": P, "memory": 2}, runtime_estimate=40),
                [TaskPlacement("m0", {"cpu": P, "memory": 2})], 0.0, 40.0)
    state.start(job("y", {"cpu": P, "memory": 4}, count=2, runtime_estimate=20),
                [TaskPlacement("m1", {"cpu": P, "memory": 4}, count=2)], 0.0, 20.0)
    state.start(job("z", {"cpu": P, "gpu": 1}), [TaskPlacement("m0", {"cpu": P})], 0.0, None)
    prof = Profile.of(state, 10.0)
    assert (prof.names, prof.times) == (("cpu", "memory"), [10.0, 20.0, 40.0])
    assert prof.free == [[0, 6], [2 * P, 14], [3 * P, 16]]
    prof = Profile.of(state, 30.0)  # y is past its estimate: it ends now
    assert (prof.times, prof.free) == ([30.0, 40.0], [[2 * P, 14], [3 * P, 16]])


def test_profile_earliest_over_several_resources() -> None:
    prof = Profile(["cpu", "gpu"], 0.0, [4, 0], [(10.0, [0, 2]), (20.0, [-3, 0]),
                                                (30.0, [3, 1])])
    # Steps: 0 [4,0]; 10 [4,2]; 20 [1,2]; 30 [4,3].
    assert prof.earliest([2, 1], 5.0) == 10.0
    assert prof.earliest([2, 1], 10.0) == 10.0
    assert prof.earliest([2, 1], 10.5) == 30.0
    assert prof.earliest([2, 1], None) == 30.0
    assert prof.earliest([2, 1], 5.0, later_than=10.0) == 30.0
    assert prof.earliest([2, 1], 5.0, first_only=True) is None
    assert prof.earliest([4, 0], 5.0, first_only=True) == 0.0
    assert prof.earliest([0, 3], None) == 30.0
    assert prof.earliest([0, 4], None) is None
    assert prof.earliest([5, 0], 1.0) is None
    assert prof.earliest([2, 0], 25.0, later_than=0.0) == 30.0


def test_profile_reserve_splits_steps_and_takes_every_resource() -> None:
    prof = Profile(["cpu", "gpu"], 0.0, [4, 2], [(10.0, [1, 1])])
    prof.reserve(5.0, [1, 1], 10.0)
    assert prof.times == [0.0, 5.0, 10.0, 15.0]
    assert prof.free == [[4, 2], [3, 1], [4, 2], [5, 3]]
    prof.reserve(10.0, [2, 0], None)
    assert prof.free == [[4, 2], [3, 1], [2, 2], [3, 3]]
    prof.reserve(-5.0, [1, 0], 7.0)  # from before the start: from the start
    assert prof.times == [0.0, 2.0, 5.0, 10.0, 15.0]
    assert prof.free == [[3, 2], [4, 2], [3, 1], [2, 2], [3, 3]]
    prof.reserve(0.0, [0, 1], 2.0)
    assert prof.free == [[3, 1], [4, 2], [3, 1], [2, 2], [3, 3]]


def test_one_task_counts_what_a_node_frees_across_instants() -> None:
    # n0 frees 1 at 20 and 1 at 30: the task fits there at 30.
    state = nodes(1)
    hold(state, "a", ["n0"], 0.0, 20.0)
    hold(state, "c", ["n0"], 0.0, 30.0)
    two = job("t", {"cpu": 2 * P})
    assert both_ways(state, two, 10.0) == ("t", 30.0, {"n0": {"cpu": 2 * P}},
                                           {"n0": {"cpu": 0}}, None, 0)
    # a is past its estimate (ends now); c still frees the rest at 30.
    assert both_ways(state, two, 25.0) == ("t", 30.0, {"n0": {"cpu": 2 * P}},
                                           {"n0": {"cpu": 0}}, None, 0)
    # One that never fits, as every known end passes.
    forever = nodes(1)
    hold(forever, "e", ["n0"], 0.0, None)
    hold(forever, "a", ["n0"], 0.0, 50.0)
    assert both_ways(forever, two, 10.0) is None
    # The reservation is JSON as the API writes it: whole numbers.
    found = easy_reservation(state, placer(state), two, 10.0)
    assert found is not None
    assert json.dumps(found.reservation.nodes) == '{"n0": {"cpu": 2000}}'


def test_one_task_skips_nodes_that_take_nothing_as_they_free() -> None:
    # x is cordoned: what it frees (now, or at 30) never counts, and the
    # other task of m still frees n0 at 30.
    state = ClusterState([Node("n0", {"cpu": 2 * P}),
                          Node("x", {"cpu": 2 * P}, state=NodeState.CORDONED)])
    hold(state, "f", ["x"], 0.0, 5.0, cpu=P)
    state.start(job("m", {"cpu": P}, count=2),
                [TaskPlacement("x", {"cpu": P}), TaskPlacement("n0", {"cpu": P})], 0.0, 30.0)
    hold(state, "k", ["n0"], 0.0, 40.0)
    two = job("t", {"cpu": 2 * P})
    assert both_ways(state, two, 10.0) == ("t", 40.0, {"n0": {"cpu": 2 * P}},
                                           {"n0": {"cpu": 0}}, None, 0)
    one = ClusterState([Node("n0", {"cpu": 2 * P}),
                        Node("x", {"cpu": 2 * P}, state=NodeState.CORDONED)])
    one.start(job("m", {"cpu": P}, count=2),
              [TaskPlacement("x", {"cpu": P}), TaskPlacement("n0", {"cpu": P})], 0.0, 30.0)
    hold(one, "g", ["x"], 0.0, 35.0)
    hold(one, "k", ["n0"], 0.0, 30.0)
    assert both_ways(one, two, 10.0) == ("t", 30.0, {"n0": {"cpu": 2 * P}},
                                         {"n0": {"cpu": 0}}, None, 0)
    past = ClusterState([Node("n0", {"cpu": 2 * P}),
                         Node("x", {"cpu": 2 * P}, state=NodeState.CORDONED)])
    hold(past, "f", ["x"], 0.0, 5.0, cpu=2 * P)
    hold(past, "k", ["n0"], 0.0, 40.0, cpu=2 * P)
    assert both_ways(past, two, 10.0) == ("t", 40.0, {"n0": {"cpu": 2 * P}},
                                          {"n0": {"cpu": 0}}, None, 0)


def test_two_matching_devices_must_be_free_for_a_task_of_two() -> None:
    state = ClusterState([gpu_node("a", "T4", "A100", "A100")])
    want = {"cpu": P, "gpu": 2}
    state.start(job("j", want, runtime_estimate=20),
                [TaskPlacement("a", want, {"gpu": ("ag0", "ag1")})], 0.0, 20.0)
    state.start(job("k", {"cpu": P, "gpu": 1}, runtime_estimate=50),
                [TaskPlacement("a", {"cpu": P, "gpu": 1}, {"gpu": ("ag2",)})], 0.0, 50.0)
    pair = job("t", want, constraints=parse_constraints("gpu.model=A100"))
    assert both_ways(state, pair, 10.0) == ("t", 50.0, {"a": {"cpu": P, "gpu": 2}},
                                            {"a": {"cpu": 3 * P, "gpu": 1}}, None, 0)
    two_kinds = ClusterState([Node("d", {"cpu": 4 * P}, devices={
        "gpu": (Device("g0"),), "fpga": (Device("f0"),)})])
    rec = two_kinds.nodes["d"]
    both = {"cpu": P, "gpu": 1, "fpga": 1}
    assert _free_matching(job("t", both), both, rec, {"gpu": [], "fpga": ["f0"]}) == 0
    assert _free_matching(job("t", both), both, rec, {"gpu": ["g0"], "fpga": ["f0"]}) == 1


def test_try_at_adds_up_two_groups_on_one_node() -> None:
    state = nodes(1, cpu=4 * P)
    mixed = Job("g", (TaskSpec({"cpu": 2 * P}, 1), TaskSpec({"cpu": P}, 1)))
    found = _try_at(state, placer(state), mixed, 7.0, [])
    assert view(found) == ("g", 7.0, {"n0": {"cpu": 3 * P}}, {"n0": {"cpu": P}}, None, 0)


def test_a_cached_none_is_answered_again() -> None:
    state = nodes(1)
    hold(state, "a", ["n0"], 0.0, 50.0)
    pl = placer(state)
    never = job("h", {"cpu": 3 * P})
    assert cached_easy_reservation(state, pl, never, 10.0) is None
    assert cached_easy_reservation(state, pl, never, 10.0) is None


def test_the_general_method_starts_from_the_free_capacity() -> None:
    # n1 is idle; the gang needs n0 too, free at 50.
    state = nodes(2)
    hold(state, "a", ["n0"], 0.0, 50.0, cpu=2 * P)
    gang = job("g", {"cpu": 2 * P}, count=2)
    assert both_ways(state, gang, 10.0) == (
        "g", 50.0, {"n0": {"cpu": 2 * P}, "n1": {"cpu": 2 * P}},
        {"n0": {"cpu": 0}, "n1": {"cpu": 0}}, None, 0)
    # A running job without a resource the head asks for frees none of it.
    mem = ClusterState([Node(f"m{i}", {"cpu": 2 * P, "memory": 4}) for i in range(2)])
    hold(mem, "a", ["m0"], 0.0, 50.0, cpu=2 * P)
    hold(mem, "b", ["m1"], 0.0, 60.0, cpu=2 * P)
    gang = job("g", {"cpu": 2 * P, "memory": 4}, count=2)
    assert both_ways(mem, gang, 10.0) == (
        "g", 60.0, {"m0": {"cpu": 2 * P, "memory": 4}, "m1": {"cpu": 2 * P, "memory": 4}},
        {"m0": {"cpu": 0, "memory": 0}, "m1": {"cpu": 0, "memory": 0}}, None, 0)


def test_pools_of_single_units_and_jobs_on_nodes_out_of_the_pool() -> None:
    slots = ClusterState([Node("s0", {"slot": 4})])
    assert pool_for(slots, job("j", {"slot": 1})) == Pool("slot", 1)
    # m0 is cordoned (no class of the pool) and runs a job without cpu.
    state = ClusterState([Node("n0", {"cpu": 2 * P}),
                          Node("m0", {"memory": 8}, state=NodeState.CORDONED)])
    state.start(job("mem", {"memory": 2}, runtime_estimate=20),
                [TaskPlacement("m0", {"memory": 2})], 0.0, 20.0)
    hold(state, "a", ["n0"], 0.0, 30.0)
    pool = pool_for(state, job("j", {"cpu": P}))
    assert pool == Pool("cpu", P)
    assert view(pool_reservation(state, pool, job("h", {"cpu": P}, count=2), 10.0)) == (
        "h", 30.0, {}, {}, pool, 0)
    assert view(pool_reservation(state, pool, job("h", {"cpu": P}, count=1), 10.0)) == (
        "h", 10.0, {}, {}, pool, 0)


def test_profile_edges_of_several_resources_and_of_jobs_without_one() -> None:
    prof = Profile(["cpu", "gpu"], 0.0, [4, 0], [(10.0, [0, 2]), (20.0, [-3, 0]),
                                                (30.0, [3, 1])])
    assert prof.earliest([4, 2], 10.0) == 10.0
    state = ClusterState([Node("m0", {"cpu": 2 * P, "memory": 8})])
    hold(state, "c", ["m0"], 0.0, 20.0)
    prof = Profile.of(state, 10.0)
    assert prof.free == [[P, 8], [2 * P, 8]]


def test_one_task_ignores_what_nodes_it_may_not_use_free() -> None:
    # Only "za" matches the head's terms; "zb" frees everything first.
    state = ClusterState([Node("za", {"cpu": 2 * P}, labels={"zone": "a"}),
                          Node("zb", {"cpu": 2 * P}, labels={"zone": "b"})])
    hold(state, "j1", ["zb"], 0.0, 5.0)  # past its estimate at 10
    hold(state, "j2", ["zb"], 0.0, 20.0)
    hold(state, "k", ["za"], 0.0, 30.0, cpu=2 * P)
    head = job("t", {"cpu": 2 * P}, constraints=parse_constraints("zone=a"))
    assert both_ways(state, head, 10.0) == ("t", 30.0, {"za": {"cpu": 2 * P}},
                                            {"za": {"cpu": 0}}, None, 0)
    state.finish("j1")  # now zb is first met as j2 ends, and met again at 25
    hold(state, "j3", ["zb"], 0.0, 25.0)
    assert both_ways(state, head, 10.0) == ("t", 30.0, {"za": {"cpu": 2 * P}},
                                            {"za": {"cpu": 0}}, None, 0)
