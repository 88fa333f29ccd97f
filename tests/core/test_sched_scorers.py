"""Score plugins decide between feasible nodes as the strategy says."""

from __future__ import annotations

from apportion.core.model import Device, Node
from apportion.core.scheduling import (
    ClusterState,
    SchedulerConfig,
    TaskPlacement,
    job,
    schedule_cycle,
)

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
    r = schedule_cycle(state, [job("g", {"cpu": 1000}, count=3)], 0.0,
                       SchedulerConfig(strategy="spread"))
    assert sorted(t.node for t in r.placements[0].tasks) == ["n0", "n1", "n2"]


def test_binpack_puts_a_group_on_as_few_nodes_as_fit() -> None:
    state = ClusterState([Node(f"n{i}", {"cpu": 8000}) for i in range(3)])
    r = schedule_cycle(state, [job("g", {"cpu": 1000}, count=3)], 0.0,
                       SchedulerConfig(strategy="binpack"))
    assert [(t.node, t.count) for t in r.placements[0].tasks] == [("n0", 3)]


def test_fitness_keeps_gpu_nodes_for_gpu_jobs() -> None:
    gpus = tuple(Device(f"GPU-{k}", "A100") for k in range(4))
    state = ClusterState([
        Node("gpu", {"cpu": 8000, "memory": 32 * GI}, devices={"gpu": gpus}),
        Node("cpu", {"cpu": 8000, "memory": 32 * GI}),
    ])
    assert place(state, "fifo", {"cpu": 2000}) == "cpu"


def test_cost_prefers_the_cheapest_node() -> None:
    state = ClusterState([
        Node("dear", {"cpu": 8000}, labels={"cost": "3.5"}),
        Node("cheap", {"cpu": 8000}, labels={"cost": "0.4"}),
        Node("mid", {"cpu": 8000}, labels={"cost": "1.0"}),
    ])
    assert place(state, "cost", {"cpu": 1000}) == "cheap"


def test_topology_keeps_a_gang_in_one_zone() -> None:
    state = ClusterState([
        Node(f"{z}{i}", {"cpu": 2000}, labels={"zone": z}) for z in ("a", "b") for i in range(3)
    ])
    blocker = job("blk", {"cpu": 1000})
    state.start(blocker, [TaskPlacement("b0", {"cpu": 1000})], 0.0)
    r = schedule_cycle(state, [job("g", {"cpu": 2000}, count=3)], 0.0, SchedulerConfig())
    zones = {t.node[0] for t in r.placements[0].tasks}
    assert len(zones) == 1
