"""The placement engine: a plain grant's node choice and the filters it asks."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from sortedcontainers import SortedList

from apportion.core.errors import InsufficientResources, UnknownResource
from apportion.core.model import Health, Node, NodeState
from apportion.core.reasons import Code, short_on_node
from apportion.core.scheduling import ClusterState, job
from apportion.core.scheduling.engine import (
    BEST_FIT_CANDIDATES,
    Placer,
    admits,
    choose_node,
    refuse,
    refuse_named,
    shortages,
)
from apportion.core.scheduling.filters import REQUEST_FILTERS, NodeReady, ResourcesFit
from apportion.core.scheduling.framework import Placer as FrameworkPlacer
from sched_support import free_index

GI = 2**30


@dataclass
class Slot:
    node: Node
    free: dict[str, int]


NODES = [
    Node("ready", {"cpu": 8000, "memory": 32 * GI}),
    Node("draining", {"cpu": 8000, "memory": 32 * GI}, state=NodeState.DRAINING),
    Node("unhealthy", {"cpu": 8000, "memory": 32 * GI}, health=Health.UNHEALTHY),
    Node("degraded", {"cpu": 8000, "memory": 32 * GI}, health=Health.DEGRADED),
    Node("cpu-only", {"cpu": 4000}),
]


@pytest.mark.parametrize("request_", [
    {"cpu": 1000}, {"cpu": 8000, "memory": 32 * GI}, {"cpu": 9000}, {"memory": 40 * GI},
    {"cpu": 1000, "memory": GI}, {"cpu": 1, "gpu": 1},
])
def test_a_plain_request_is_admitted_where_a_one_task_job_would_be(
    request_: dict[str, int],
) -> None:
    # The grant's walk and the job's walk decide on different indexes with
    # the same plugins: for one task they must agree on every node.
    state = ClusterState(NODES)
    j = job("j", request_)
    spec = j.tasks[0]
    for node in NODES:
        rec = state.nodes[node.name]
        for used in (0, 500, 4000, 8000):
            free = {r: cap - min(cap, used * (GI if r == "memory" else 1))
                    for r, cap in node.resources.items()}
            vector = [free[r] for r in rec.cls.resources]
            job_says = all(
                plugin.check_class(j, spec, rec.cls) is None
                for plugin in (NodeReady(), ResourcesFit())
            ) and ResourcesFit().check_node(j, spec, rec, vector, state) is None
            assert admits(request_, Slot(node, free)) is job_says, (node.name, used)


def test_the_request_filters_are_the_ready_and_fit_plugins() -> None:
    assert [type(p) for p in REQUEST_FILTERS] == [NodeReady, ResourcesFit]
    assert Placer is FrameworkPlacer


def test_choose_node_takes_the_tightest_node_the_filters_admit() -> None:
    slots = {
        "big": Slot(NODES[0], {"cpu": 8000, "memory": 32 * GI}),
        "tight-draining": Slot(NODES[1], {"cpu": 1000, "memory": GI}),
        "mid-degraded": Slot(NODES[3], {"cpu": 2000, "memory": 4 * GI}),
    }
    assert choose_node({"cpu": 1000, "memory": GI}, free_index(slots), slots) == "mid-degraded"


def test_refuse_names_each_node_and_why() -> None:
    slots = {
        "a": Slot(NODES[0], {"cpu": 500, "memory": 32 * GI}),
        "d": Slot(NODES[1], {"cpu": 8000, "memory": 32 * GI}),
    }
    with pytest.raises(InsufficientResources) as err:
        refuse({"cpu": 1000}, slots)
    data = err.value.to_dict()
    assert data["node_reasons"] == {"d": "is draining"}
    assert [s["node"] for s in data["shortages"]] == ["a"]
    assert data["nodes_considered"] == 2


# -- choose_node, literally ----------------------------------------------------


def _cap(name: str, state: NodeState = NodeState.READY,
         health: Health = Health.HEALTHY) -> Node:
    return Node(name, {"cpu": 100, "memory": 100}, state=state, health=health)


def _slots(frees: dict[str, tuple[int, int]]) -> dict[str, Slot]:
    return {n: Slot(_cap(n), {"cpu": c, "memory": m}) for n, (c, m) in frees.items()}


def test_choose_node_walks_the_resource_fewest_nodes_can_give() -> None:
    # Five nodes have 10 cpu free, eight have 10 memory: the walk goes up
    # the cpu index and compares its first four admitted nodes (a..d),
    # where a walk up the memory index would meet e (the tightest) first.
    slots = _slots({
        "a": (11, 90), "b": (12, 90), "c": (13, 90), "d": (14, 90), "e": (50, 10),
        "f": (5, 11), "g": (5, 12), "h": (5, 13),
    })
    assert choose_node({"cpu": 10, "memory": 10}, free_index(slots), slots) == "a"
    # With cpu-only nodes instead, memory is the shorter walk.
    slots = _slots({
        "a": (11, 90), "b": (12, 90), "c": (13, 90), "d": (14, 90), "e": (50, 10),
        "f": (60, 5), "g": (70, 5),
    })
    assert choose_node({"cpu": 10, "memory": 10}, free_index(slots), slots) == "e"
    assert BEST_FIT_CANDIDATES == 4


def test_choose_node_starts_at_the_first_node_with_exactly_enough() -> None:
    slots = _slots({"A": (10, 10), "b": (9, 90), "c": (40, 90)})
    assert choose_node({"cpu": 10}, free_index(slots), slots) == "A"
    assert choose_node({"cpu": 10, "memory": 10}, free_index(slots), slots) == "A"


def test_choose_node_keeps_the_first_of_equally_tight_nodes() -> None:
    slots = _slots({"x": (20, 30), "y": (30, 20), "z": (90, 90)})
    assert choose_node({"cpu": 10, "memory": 10}, free_index(slots), slots) == "x"


def test_choose_node_skips_nodes_a_filter_refuses_and_takes_a_later_one() -> None:
    slots = _slots({"a": (10, 10), "b": (10, 5), "c": (60, 60)})
    slots["a"] = Slot(_cap("a", state=NodeState.DRAINING), {"cpu": 10, "memory": 10})
    assert choose_node({"cpu": 10, "memory": 10}, free_index(slots), slots) == "c"


def test_choose_node_refuses_with_every_nodes_reason() -> None:
    slots = _slots({"a": (5, 50), "b": (50, 5)})
    with pytest.raises(InsufficientResources) as err:
        choose_node({"cpu": 10, "memory": 10}, free_index(slots), slots)
    data = err.value.to_dict()
    assert data["nodes_considered"] == 2
    assert [(s["node"], s["resource"]) for s in data["shortages"]] == [
        ("a", "cpu"), ("b", "memory")]


def test_choose_node_names_resources_no_node_has() -> None:
    slots = _slots({"a": (50, 50)})
    index = free_index(slots)
    index["gpu"] = SortedList()  # known, but no node has any
    with pytest.raises(UnknownResource) as err:
        choose_node({"cpu": 1, "gpu": 1, "fpga": 2}, index, slots)
    assert err.value.message == "resources.fpga: no node has fpga, gpu"
    assert err.value.data == {"field": "resources.fpga"}


def test_shortages_lists_each_short_resource_with_what_the_node_has() -> None:
    slot = Slot(Node("a", {"cpu": 4000}), {"cpu": 500})
    assert shortages("a", slot, {"cpu": 1000, "memory": GI}) == [
        short_on_node("a", "cpu", 500, 1000),
        short_on_node("a", "memory", 0, GI, offered=False),
    ]
    assert shortages("a", slot, {"cpu": 500}) == []


def test_refuse_puts_shortages_first_then_unready_nodes_by_name() -> None:
    slots = {
        "z": Slot(_cap("z", health=Health.UNHEALTHY), {"cpu": 90, "memory": 90}),
        "b": Slot(_cap("b"), {"cpu": 1, "memory": 90}),
        "y": Slot(_cap("y", state=NodeState.CORDONED), {"cpu": 90, "memory": 90}),
        "a": Slot(_cap("a"), {"cpu": 2, "memory": 1}),
    }
    with pytest.raises(InsufficientResources) as err:
        refuse({"cpu": 10, "memory": 10}, slots)
    reasons = err.value.failure.reasons
    assert [(r.node, r.code, r.resource) for r in reasons] == [
        ("a", Code.INSUFFICIENT, "cpu"), ("a", Code.INSUFFICIENT, "memory"),
        ("b", Code.INSUFFICIENT, "cpu"),
        ("y", Code.NOT_READY, None), ("z", Code.UNHEALTHY, None),
    ]
    assert err.value.to_dict()["node_reasons"] == {"y": "is cordoned", "z": "is unhealthy"}
    assert err.value.to_dict()["nodes_considered"] == 4


def test_refuse_named_says_what_the_node_does_not_offer() -> None:
    slot = Slot(_cap("a"), {"cpu": 100, "memory": 100})
    with pytest.raises(UnknownResource) as err:
        refuse_named("a", slot, {"cpu": 1, "gpu": 1, "fpga": 1})
    assert err.value.message == (
        "resources.fpga: node a does not offer fpga, gpu (it offers cpu, memory)")
    assert err.value.data == {"field": "resources.fpga", "node": "a"}
    bare = Slot(Node("e", {}), {})
    with pytest.raises(UnknownResource) as err:
        refuse_named("e", bare, {"gpu": 1})
    assert err.value.message == "resources.gpu: node e does not offer gpu (it offers nothing)"


def test_refuse_named_says_the_node_is_not_ready_or_what_is_short() -> None:
    down = Slot(_cap("d", health=Health.UNHEALTHY), {"cpu": 100, "memory": 100})
    with pytest.raises(InsufficientResources) as err:
        refuse_named("d", down, {"cpu": 1})
    assert [(r.node, r.code, r.message) for r in err.value.failure.reasons] == [
        ("d", Code.UNHEALTHY, "is unhealthy")]
    assert err.value.to_dict()["nodes_considered"] == 1
    drained = Slot(_cap("d", state=NodeState.DRAINING), {"cpu": 100, "memory": 100})
    with pytest.raises(InsufficientResources) as err:
        refuse_named("d", drained, {"cpu": 1})
    assert [(r.node, r.code, r.message) for r in err.value.failure.reasons] == [
        ("d", Code.NOT_READY, "is draining")]
    busy = Slot(_cap("b"), {"cpu": 3, "memory": 100})
    with pytest.raises(InsufficientResources) as err:
        refuse_named("b", busy, {"cpu": 5, "memory": 100})
    assert [(r.node, r.resource, r.available, r.requested)
            for r in err.value.failure.reasons] == [("b", "cpu", 3, 5)]
    assert err.value.to_dict()["nodes_considered"] == 1


def test_admits_asks_every_request_filter() -> None:
    ready = _cap("r")
    assert admits({"cpu": 10}, Slot(ready, {"cpu": 10, "memory": 0}))
    assert not admits({"cpu": 11}, Slot(ready, {"cpu": 10, "memory": 0}))
    assert not admits({"cpu": 1}, Slot(_cap("d", state=NodeState.DRAINING), {"cpu": 10}))


def test_choose_node_compares_exactly_the_first_four_admitted_nodes() -> None:
    # Up the cpu index: a, b, c, d (the best of four), then e (better still).
    slots = _slots({
        "a": (11, 90), "b": (12, 90), "c": (13, 90), "d": (14, 12), "e": (15, 10),
        "f": (5, 50), "g": (5, 60),
    })
    assert choose_node({"cpu": 10, "memory": 10}, free_index(slots), slots) == "d"


def test_best_fit_weighs_what_is_left_by_each_nodes_capacity() -> None:
    # Left over after 10 cpu: x 10/100, y 2/10, z 140/1000.
    slots = {
        "x": Slot(Node("x", {"cpu": 100}), {"cpu": 20}),
        "y": Slot(Node("y", {"cpu": 10}), {"cpu": 12}),
        "z": Slot(Node("z", {"cpu": 1000}), {"cpu": 150}),
    }
    assert choose_node({"cpu": 10}, free_index(slots), slots) == "x"
