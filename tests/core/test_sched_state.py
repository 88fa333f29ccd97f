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
