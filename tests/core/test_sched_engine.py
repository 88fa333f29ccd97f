"""The placement engine: a plain grant's node choice and the filters it asks."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from sortedcontainers import SortedList

from apportion.core.errors import InsufficientResources
from apportion.core.model import Health, Node, NodeState
from apportion.core.scheduling import ClusterState, job
from apportion.core.scheduling.engine import Placer, admits, choose_node, refuse
from apportion.core.scheduling.filters import REQUEST_FILTERS, NodeReady, ResourcesFit
from apportion.core.scheduling.framework import Placer as FrameworkPlacer

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


def _index(slots: dict[str, Slot]) -> dict[str, SortedList]:
    index: dict[str, SortedList] = {}
    for name, slot in slots.items():
        for r, q in slot.free.items():
            index.setdefault(r, SortedList()).add((q, name))
    return index


def test_choose_node_takes_the_tightest_node_the_filters_admit() -> None:
    slots = {
        "big": Slot(NODES[0], {"cpu": 8000, "memory": 32 * GI}),
        "tight-draining": Slot(NODES[1], {"cpu": 1000, "memory": GI}),
        "mid-degraded": Slot(NODES[3], {"cpu": 2000, "memory": 4 * GI}),
    }
    assert choose_node({"cpu": 1000, "memory": GI}, _index(slots), slots) == "mid-degraded"


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
