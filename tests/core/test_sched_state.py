"""ClusterState: classes, buckets, indexes, grants and transactions."""

from __future__ import annotations

import pytest

from apportion.core.model import Health, Node, NodeState
from apportion.core.scheduling import ClusterState, TaskPlacement, job
from apportion.exceptions import InsufficientResources

GI = 2**30


def nodes(n: int, cpu: int = 4000, mem: int = 16 * GI) -> list[Node]:
    return [Node(f"n{i}", {"cpu": cpu, "memory": mem}) for i in range(n)]


def test_identical_nodes_share_one_class_and_one_bucket() -> None:
    state = ClusterState(nodes(3))
    assert len(list(state.classes)) == 1
    assert [len(b.nodes) for b in state.buckets()] == [3]
    assert state.free_total() == {"cpu": 12000, "memory": 48 * GI}
    assert state.max_free("cpu") == 4000


def test_a_grant_moves_the_node_to_another_bucket_and_updates_totals() -> None:
    state = ClusterState(nodes(3))
    j = job("a", {"cpu": 1000, "memory": GI})
    state.start(j, [TaskPlacement("n1", j.tasks[0].resources)], 0.0, 60.0)
    assert sorted(len(b.nodes) for b in state.buckets()) == [1, 2]
    assert state.free("n1") == {"cpu": 3000, "memory": 15 * GI}
    assert state.free_total() == {"cpu": 11000, "memory": 47 * GI}
    assert state.usage("default") == {"cpu": 1000, "memory": GI}
    state.finish("a")
    assert [len(b.nodes) for b in state.buckets()] == [3]
    assert state.usage("default") == {"cpu": 0, "memory": 0}


def test_start_refuses_to_oversubscribe_and_leaves_nothing_behind() -> None:
    state = ClusterState(nodes(2))
    j = job("big", {"cpu": 3000}, count=2, gang=True)
    tasks = [TaskPlacement("n0", {"cpu": 3000}), TaskPlacement("n0", {"cpu": 3000})]
    with pytest.raises(InsufficientResources):
        state.start(j, tasks, 0.0)
    assert state.free("n0") == {"cpu": 4000, "memory": 16 * GI}
    assert "big" not in state.running


def test_rollback_restores_every_grant_and_release() -> None:
    state = ClusterState(nodes(2))
    a = job("a", {"cpu": 2000})
    state.start(a, [TaskPlacement("n0", {"cpu": 2000})], 0.0)
    before = ({n: state.free(n) for n in state.nodes}, state.free_total(), state.changes)
    mark = state.mark()
    state.finish("a")
    b = job("b", {"cpu": 4000})
    state.start(b, [TaskPlacement("n1", {"cpu": 4000})], 1.0)
    state.rollback(mark)
    assert ({n: state.free(n) for n in state.nodes}, state.free_total(), state.changes) == before
    assert list(state.running) == ["a"]


def test_unready_nodes_are_not_indexed_but_count_as_nodes() -> None:
    state = ClusterState([*nodes(1), Node("d", {"cpu": 8000}, state=NodeState.DRAINING),
                          Node("u", {"cpu": 8000}, health=Health.UNHEALTHY)])
    assert state.max_free("cpu") == 4000
    assert state.free_total()["cpu"] == 4000
    assert len(state.nodes) == 3


def test_update_node_keeps_jobs_that_still_fit_and_returns_the_others() -> None:
    state = ClusterState(nodes(1))
    a = job("a", {"cpu": 3000})
    state.start(a, [TaskPlacement("n0", {"cpu": 3000})], 0.0)
    assert state.update_node(Node("n0", {"cpu": 4000, "memory": 16 * GI},
                                  labels={"zone": "b"})) == []
    assert state.free("n0")["cpu"] == 1000
    lost = state.update_node(Node("n0", {"cpu": 2000, "memory": 16 * GI}))
    assert [rj.job.id for rj in lost] == ["a"]
    assert state.free("n0")["cpu"] == 2000


def test_remove_node_stops_its_jobs() -> None:
    state = ClusterState(nodes(2))
    a = job("a", {"cpu": 1000}, count=2, gang=True)
    state.start(a, [TaskPlacement("n0", {"cpu": 1000}), TaskPlacement("n1", {"cpu": 1000})], 0.0)
    lost = state.remove_node("n1")
    assert [rj.job.id for rj in lost] == ["a"]
    assert state.free("n0")["cpu"] == 4000
    assert state.free_total()["cpu"] == 4000


def test_copy_is_independent() -> None:
    state = ClusterState(nodes(2))
    twin = state.copy()
    a = job("a", {"cpu": 1000})
    twin.start(a, [TaskPlacement("n0", {"cpu": 1000})], 0.0)
    assert state.free("n0")["cpu"] == 4000
    assert twin.free("n0")["cpu"] == 3000


def test_reestimate_moves_a_running_jobs_expected_end() -> None:
    state = ClusterState([Node("n", {"cpu": 4000})])
    state.start(job("a", {"cpu": 1000}), [TaskPlacement("n", {"cpu": 1000})], 0.0, 50.0)
    assert state.past_estimate(60.0) == {"n": {"cpu": 1000}}
    changes = state.changes
    state.reestimate("a", 120.0)
    assert list(state.ends) == [(120.0, "a")]
    assert state.running["a"].estimate == 120.0
    assert state.past_estimate(60.0) == {}
    assert state.changes > changes  # cached backfill plans no longer hold


# -- capacity.py: what the placement walk and backfill read off the classes --


def test_free_sum_per_class_follows_grants_and_releases() -> None:
    state = ClusterState([*nodes(2), Node("big", {"cpu": 8000, "memory": 32 * GI})])
    small, big = sorted(state.classes, key=lambda c: c.capacity)
    assert (small.free_sum, big.free_sum) == ([8000, 32 * GI], [8000, 32 * GI])
    j = job("a", {"cpu": 1000, "memory": GI})
    state.start(j, [TaskPlacement("n1", j.tasks[0].resources)], 0.0)
    assert (small.free_sum, big.free_sum) == ([7000, 31 * GI], [8000, 32 * GI])
    state.finish("a")
    assert small.free_sum == [8000, 32 * GI]


def test_free_total_of_and_max_free_of_a_resource_no_node_has() -> None:
    state = ClusterState(nodes(2))
    assert (state.free_total_of("cpu"), state.free_total_of("gpu")) == (8000, 0)
    assert (state.max_free("cpu"), state.max_free("gpu")) == (4000, 0)


def test_an_unknown_node_is_named_in_the_error() -> None:
    from apportion.core.errors import NodeNotFound

    state = ClusterState(nodes(1))
    with pytest.raises(NodeNotFound) as caught:
        state.rec("zz")
    assert (caught.value.message, caught.value.data) == ("node zz not found", {"node": "zz"})


def test_a_removed_node_leaves_its_bucket_and_the_last_one_drops_it() -> None:
    state = ClusterState(nodes(2))
    state.remove_node("n0")
    assert [b.nodes for b in state.buckets()] == [["n1"]]
    r = state.start(job("a", {"cpu": 1000}), [TaskPlacement("n1", {"cpu": 1000})], 0.0)
    assert r.tasks[0].node == "n1"
    state.remove_node("n1")
    assert list(state.buckets()) == []
    assert state.free_total() == {"cpu": 0, "memory": 0}


def test_nodes_whose_devices_differ_in_model_or_memory_are_other_classes() -> None:
    from apportion.core.model import Device

    def gpu_node(name: str, model: str, mem: int) -> Node:
        return Node(name, {"cpu": 4000, "gpu": 1}, devices={"gpu": (Device("g0", model, mem),)})

    state = ClusterState([gpu_node("g1", "A100", 40 * GI), gpu_node("g2", "A100", 80 * GI),
                          gpu_node("g3", "H100", 80 * GI)])
    assert sorted((c.size, c.devices["gpu"][0].model, c.devices["gpu"][0].memory)
                  for c in state.classes) == [
        (1, "A100", 40 * GI), (1, "A100", 80 * GI), (1, "H100", 80 * GI)]


def test_node_cost_reads_cost_then_cost_hour() -> None:
    from apportion.core.scheduling.capacity import node_cost

    assert node_cost({"cost": "1.5", "cost.hour": "2"}) == 1.5
    assert node_cost({"cost.hour": "2.5"}) == 2.5
    assert node_cost({"cost": "cheap"}) is None
    assert node_cost({}) is None


def test_discard_sorted_removes_only_a_name_that_is_there() -> None:
    from apportion.core.scheduling.capacity import discard_sorted

    names = ["a", "c", "e"]
    discard_sorted(names, "c")
    assert names == ["a", "e"]
    for missing in ("b", "f"):
        with pytest.raises(KeyError) as caught:
            discard_sorted(names, missing)
        assert caught.value.args == (missing,)
    assert names == ["a", "e"]


def test_class_capacity_of_a_resource_and_every_record() -> None:
    state = ClusterState(nodes(2))
    (cls,) = state.classes
    assert (cls.cap("cpu"), cls.cap("memory"), cls.cap("gpu")) == (4000, 16 * GI, 0)
    assert [rec.name for rec in state.iter_recs()] == ["n0", "n1"]


# -- transactions: everything undone, every kind of step ----------------------


def _fleet() -> ClusterState:
    from apportion.core.model import Device

    gpus = {"gpu": tuple(Device(f"g{i}", "H100") for i in range(4))}
    return ClusterState([*nodes(6), Node("g", {"cpu": 16000}, devices=gpus)])


def _view(state: ClusterState) -> object:
    """All a caller can read of the state (besides ``changes``)."""
    return (
        {n: (r.free, dict(r.jobs), r.bucket and list(r.bucket.nodes),
             {k: list(v) for k, v in r.free_devices.items()}) for n, r in state.nodes.items()},
        state.free_total(),
        sorted((b.cls.id, b.free, tuple(b.nodes)) for b in state.buckets()),
        {r: [e[:3] for e in state.index(r) or ()] for r in ("cpu", "memory", "gpu")},
        {k: (rj.start, rj.estimate) for k, rj in state.running.items()},
        list(state.ends),
        {q: {r: n for r, n in state.usage(q).items() if n} for q in state.queues_in_use()
         if any(state.usage(q).values())},
        state.lowest_preemptible_priority(),
        {c.id: list(c.free_sum) for c in state.classes},
        {n: {r: q for r, q in v.items() if q} for n, v in state.past_estimate(100.0).items()
         if any(v.values())},
    )


def _steps(state: ClusterState, tag: str) -> None:
    """A start, a gang released in one bulk move, devices taken and given
    back, a direct bulk grant and a new estimate."""
    gang = job(f"{tag}gang", {"cpu": 500, "memory": GI}, count=4, priority=2, preemptible=True)
    res = gang.tasks[0].resources
    state.start(gang, [TaskPlacement(f"n{i}", res) for i in range(4)], 0.0, 50.0)
    g = job(f"{tag}g", {"cpu": 1000, "gpu": 2})
    state.start(g, [TaskPlacement("g", {"cpu": 1000, "gpu": 2}, {"gpu": ("g3", "g1")})],
                0.0, 10.0)
    state.finish(f"{tag}g")
    state.finish(f"{tag}gang")
    state.bulk([state.nodes["n4"], state.nodes["n5"]], (250, 0), 2, f"{tag}x", 1)
    state.start(job(f"{tag}e", {"cpu": 100}), [TaskPlacement("n0", {"cpu": 100})], 0.0, 200.0)
    state.reestimate(f"{tag}e", 90.0)


def test_rollback_undoes_every_kind_of_step_and_leaves_changes_alone() -> None:
    state = _fleet()
    state.start(job("keep", {"cpu": 1000, "gpu": 1}, preemptible=True, priority=7),
                [TaskPlacement("g", {"cpu": 1000, "gpu": 1}, {"gpu": ("g2",)})], 0.0, 80.0)
    state.start(job("old", {"cpu": 300}, count=2), [
        TaskPlacement("n1", {"cpu": 300}), TaskPlacement("n2", {"cpu": 300})], 0.0, 20.0)
    before, changes = _view(state), state.changes
    assert changes == 5
    mark = state.mark()
    assert mark == 0
    _steps(state, "")
    state.finish("old")
    state.finish("keep")
    assert state.changes == changes  # nothing counts inside a transaction
    state.rollback(mark)
    assert _view(state) == before
    assert state.changes == changes
    # The transaction is closed: the next step counts again.
    state.finish("old")
    assert state.changes == changes + 3  # two releases (requests not shared) and the job


def test_a_nested_commit_is_rolled_back_with_the_outer_transaction() -> None:
    state = _fleet()
    before = _view(state)
    outer = state.mark()
    state.start(job("a", {"cpu": 100}), [TaskPlacement("n0", {"cpu": 100})], 0.0, 5.0)
    inner = state.mark()
    assert (outer, inner) == (0, 2)
    _steps(state, "in-")
    state.commit(inner)
    assert state.changes == 0
    assert "in-e" in state.running
    state.rollback(outer)
    assert _view(state) == before
    assert state.changes == 0


def test_a_nested_rollback_keeps_what_came_before_it() -> None:
    state = _fleet()
    outer = state.mark()
    state.start(job("a", {"cpu": 100}), [TaskPlacement("n0", {"cpu": 100})], 0.0, 5.0)
    middle = _view(state)
    inner = state.mark()
    _steps(state, "in-")
    state.rollback(inner)
    assert _view(state) == middle
    state.commit(outer)
    assert state.changes == 1
    assert list(state.running) == ["a"]
    assert state.free("n0")["cpu"] == 3900


def test_commit_counts_one_change_only_when_something_was_done() -> None:
    state = _fleet()
    state.commit(state.mark())
    assert state.changes == 0
    mark = state.mark()
    _steps(state, "")
    state.commit(mark)
    assert state.changes == 1
    assert sorted(state.running) == ["e"]
    assert state.nodes["n4"].jobs == {"x": 2}
    assert state.free("n4")["cpu"] == 3500
    # Closed: a step outside counts by itself.
    state.finish("e")
    assert state.changes == 3


def test_a_copy_has_the_same_nodes_and_running_jobs() -> None:
    state = _fleet()
    _steps(state, "")
    state.bulk([state.nodes["n4"], state.nodes["n5"]], (250, 0), 2, "x", -1)  # no job's
    twin = state.copy()
    assert _view(twin) == _view(state)
    assert twin.nodes["n0"].node is state.nodes["n0"].node
    twin.finish("e")
    assert "e" in state.running


def test_commit_adds_one_to_the_changes_counted_before() -> None:
    state = _fleet()
    state.start(job("a", {"cpu": 100}), [TaskPlacement("n0", {"cpu": 100})], 0.0)
    assert state.changes == 2
    mark = state.mark()
    state.finish("a")
    state.commit(mark)
    assert state.changes == 3
