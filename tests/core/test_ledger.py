"""The in-memory ledger: literal unit tests and a stateful property test of the invariant."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from apportion.core.ledger import Ledger, rebuild, validated_node
from apportion.core.model import (
    Allocation,
    AllocationState,
    Device,
    Health,
    Node,
    NodeState,
    ReleaseReason,
)
from apportion.core.reasons import Code, Kind
from apportion.exceptions import (
    AllocationNotFound,
    CapacityBelowAllocated,
    InsufficientResources,
    InvalidInput,
    NodeExists,
    NodeHasAllocations,
    NodeNotFound,
    Reason,
    UnknownResource,
)

GiB = 2**30


def _short(exc: InsufficientResources, *, offered: bool = False) -> list[tuple[object, ...]]:
    """A refusal's shortages as (node, resource, available, requested[, offered])."""
    return [
        (s.node, s.resource, s.available, s.requested)
        + ((s.code is not Code.UNKNOWN_RESOURCE,) if offered else ())
        for s in exc.shortages
    ]


def gpus(*ids: str) -> tuple[Device, ...]:
    return tuple(Device(i, model="A100", memory=80 * GiB) for i in ids)


def ledger_with(*nodes: Node) -> Ledger:
    ledger = Ledger()
    for node in nodes:
        ledger.add_node(node)
    return ledger


# -- inventory -------------------------------------------------------------------------------------


def test_add_node_starts_all_free() -> None:
    ledger = ledger_with(Node("n1", {"cpu": 4000, "memory": 8 * GiB}))
    assert ledger.free("n1") == {"cpu": 4000, "memory": 8 * GiB}
    assert ledger.allocated("n1") == {"cpu": 0, "memory": 0}
    assert ledger.allocations_on("n1") == []
    assert list(ledger.nodes) == ["n1"]


def test_add_node_twice_is_refused() -> None:
    ledger = ledger_with(Node("n1", {"cpu": 1000}))
    with pytest.raises(NodeExists) as info:
        ledger.add_node(Node("n1", {"cpu": 2000}))
    assert info.value.message == "node n1 already exists"
    assert info.value.data == {"node": "n1"}
    assert ledger.node("n1").resources == {"cpu": 1000}


def test_unknown_node_is_not_found() -> None:
    ledger = Ledger()
    with pytest.raises(NodeNotFound) as info:
        ledger.free("ghost")
    assert info.value.message == "node ghost not found"
    assert info.value.data == {"node": "ghost"}
    with pytest.raises(NodeNotFound):
        ledger.grant("a1", {"cpu": 1}, now=1.0, node="ghost")
    with pytest.raises(NodeNotFound):
        ledger.remove_node("ghost", force=True, now=1.0)
    with pytest.raises(NodeNotFound):
        ledger.update_node(Node("ghost", {"cpu": 1}))


def test_check_node_fills_capacity_from_devices() -> None:
    node = validated_node(Node("n1", {"cpu": 1000}, devices={"gpu": gpus("g0", "g1")}))
    assert node.resources == {"cpu": 1000, "gpu": 2}

    # Everything else about the node is kept.
    devices = {"gpu": gpus("g0")}
    full = Node(
        "n2",
        {"cpu": 1000},
        devices,
        {"zone": "a"},
        {"cpu_model": "x"},
        NodeState.CORDONED,
        Health.DEGRADED,
        5.0,
        6.0,
    )
    assert validated_node(full) == Node(
        "n2",
        {"cpu": 1000, "gpu": 1},
        devices,
        {"zone": "a"},
        {"cpu_model": "x"},
        NodeState.CORDONED,
        Health.DEGRADED,
        5.0,
        6.0,
    )


def test_check_node_refuses_device_count_mismatch() -> None:
    with pytest.raises(InvalidInput) as info:
        validated_node(Node("n1", {"gpu": 3}, devices={"gpu": gpus("g0", "g1")}))
    assert info.value.message == (
        "devices.gpu: 2 devices listed but resources.gpu is 3; they must agree"
    )
    assert info.value.data == {"field": "devices.gpu"}


def test_check_node_refuses_duplicate_device_ids() -> None:
    with pytest.raises(InvalidInput) as info:
        validated_node(Node("n1", {}, devices={"gpu": gpus("g0", "g0")}))
    assert info.value.message == "devices.gpu: device ids must be unique"
    assert info.value.data == {"field": "devices"}


# -- grants ----------------------------------------------------------------------------------------


def test_best_fit_picks_the_tightest_node() -> None:
    ledger = ledger_with(
        Node("big", {"cpu": 8000}), Node("mid", {"cpu": 4000}), Node("small", {"cpu": 2000})
    )
    assert ledger.grant("a1", {"cpu": 1500}, now=1.0).node == "small"
    assert ledger.grant("a2", {"cpu": 1000}, now=1.0).node == "mid"
    assert ledger.grant("a3", {"cpu": 3000}, now=1.0).node == "mid"
    assert ledger.grant("a4", {"cpu": 500}, now=1.0).node == "small"
    assert ledger.grant("a5", {"cpu": 500}, now=1.0).node == "big"
    assert ledger.free("small") == {"cpu": 0}
    assert ledger.free("mid") == {"cpu": 0}
    assert ledger.free("big") == {"cpu": 7500}


def test_best_fit_weighs_every_requested_resource() -> None:
    # a: 1000 of 4000 cpu and 2Gi of 8Gi left after the grant; b: 1000 of 8000 cpu and
    # 1Gi of 16Gi left. b leaves the smaller shares over, so b is the tighter fit.
    ledger = ledger_with(
        Node("a", {"cpu": 4000, "memory": 8 * GiB}),
        Node("b", {"cpu": 8000, "memory": 16 * GiB}),
    )
    ledger.grant("fill-b", {"cpu": 5000, "memory": 13 * GiB}, now=1.0, node="b")
    assert ledger.free("b") == {"cpu": 3000, "memory": 3 * GiB}
    alloc = ledger.grant("a1", {"cpu": 2000, "memory": 2 * GiB}, now=2.0)
    assert alloc.node == "b"
    assert ledger.free("b") == {"cpu": 1000, "memory": GiB}


def test_best_fit_needs_every_resource_to_fit() -> None:
    ledger = ledger_with(Node("cpu-only", {"cpu": 2000}), Node("gpu-box", {"cpu": 16000, "gpu": 2}))
    assert ledger.grant("a1", {"cpu": 1000, "gpu": 1}, now=1.0).node == "gpu-box"
    assert ledger.grant("a2", {"cpu": 1000}, now=1.0).node == "cpu-only"


def test_named_grant_uses_that_node() -> None:
    ledger = ledger_with(Node("big", {"cpu": 8000}), Node("small", {"cpu": 2000}))
    alloc = ledger.grant(
        "a1", {"cpu": 1000}, now=5.0, node="big", owner="alice", labels={"job": "j1"}
    )
    assert alloc == Allocation(
        "a1", "big", {"cpu": 1000}, {}, "alice", {"job": "j1"}, AllocationState.ACTIVE, 5.0
    )
    assert ledger.free("big") == {"cpu": 7000}
    assert ledger.free("small") == {"cpu": 2000}
    assert ledger.allocated("big") == {"cpu": 1000}
    assert ledger.allocations_on("big") == [alloc]
    assert dict(ledger.active()) == {"a1": alloc}


def test_named_shortage_message() -> None:
    ledger = ledger_with(Node("n1", {"cpu": 2000}))
    with pytest.raises(InsufficientResources) as info:
        ledger.grant("a1", {"cpu": 3000}, now=1.0, node="n1")
    assert info.value.message == "Insufficient cpu on node n1: 2 available, 3 requested"
    assert info.value.shortages == [Reason(
        "ResourcesFit", Code.INSUFFICIENT, Kind.BUSY,
        "Insufficient cpu on node n1: 2 available, 3 requested", "cpu", 3000, 2000, "n1",
    )]
    assert info.value.failure.kind is Kind.BUSY
    assert info.value.data["nodes_considered"] == 1
    assert info.value.data["shortages"] == [
        {
            "node": "n1",
            "resource": "cpu",
            "available": "2",
            "requested": "3",
            "available_base": 2000,
            "requested_base": 3000,
        }
    ]
    assert ledger.free("n1") == {"cpu": 2000}
    assert dict(ledger.active()) == {}


def test_refusal_lists_every_short_resource_on_every_node() -> None:
    ledger = ledger_with(
        Node("n1", {"cpu": 2000, "memory": 4 * GiB}),
        Node("n2", {"cpu": 8000, "memory": 2 * GiB}),
        Node("n3", {"cpu": 1000}, state=NodeState.DRAINING),
    )
    with pytest.raises(InsufficientResources) as info:
        ledger.grant("a1", {"cpu": 3000, "memory": 8 * GiB}, now=1.0)
    assert info.value.message == (
        "Insufficient cpu on node n1: 2 available, 3 requested; "
        "Insufficient memory on node n1: 4Gi available, 8Gi requested; "
        "Insufficient memory on node n2: 2Gi available, 8Gi requested; "
        "Node n3 is draining"
    )
    assert info.value.data["nodes_considered"] == 3
    assert info.value.data["shortages_total"] == 3
    assert info.value.data["node_reasons"] == {"n3": "is draining"}


def test_refusal_after_grants_uses_what_is_left() -> None:
    ledger = ledger_with(Node("n1", {"cpu": 4000}))
    ledger.grant("a1", {"cpu": 2500}, now=1.0)
    with pytest.raises(InsufficientResources) as info:
        ledger.grant("a2", {"cpu": 2000}, now=1.0)
    assert info.value.message == "Insufficient cpu on node n1: 1500m available, 2 requested"


def test_shortages_is_empty_when_it_fits() -> None:
    ledger = ledger_with(Node("n1", {"cpu": 2000, "gpu": 1}))
    assert ledger.shortages("n1", {"cpu": 2000, "gpu": 1}) == []
    assert [
        (s.node, s.resource, s.available, s.requested, s.code, s.kind)
        for s in ledger.shortages("n1", {"cpu": 2001, "fpga": 1})
    ] == [
        ("n1", "cpu", 2000, 2001, Code.INSUFFICIENT, Kind.BUSY),
        ("n1", "fpga", 0, 1, Code.UNKNOWN_RESOURCE, Kind.NEVER),
    ]
    # A node without the resource says so, rather than "0 available".
    assert [s.message for s in ledger.shortages("n1", {"cpu": 2001, "fpga": 1})] == [
        "Insufficient cpu on node n1: 2 available, 2001m requested",
        "node n1 has no fpga",
    ]


def test_the_index_follows_a_change_of_one_resource_only() -> None:
    # Indexed with 2Gi of memory free; then only memory changes (cpu, first
    # in the node's order, is back where it was): the next choice must see
    # the 8Gi.
    ledger = ledger_with(Node("n1", {"cpu": 4000, "memory": 8 * GiB}))
    ledger.grant("a1", {"memory": 6 * GiB}, now=1.0, node="n1")
    ledger.grant("a0", {"cpu": 1000}, now=1.0)
    ledger.release("a0", ReleaseReason.RELEASED, 2.0)
    ledger.release("a1", ReleaseReason.RELEASED, 2.0)
    assert ledger.grant("a2", {"memory": 4 * GiB}, now=3.0).node == "n1"


def test_a_resource_gone_from_a_node_leaves_the_index() -> None:
    # The node is indexed with its gpu, then described without it: a gpu
    # grant must find no node offering gpu, not a stale entry too small.
    ledger = ledger_with(Node("a", {"cpu": 4000, "gpu": 2}))
    ledger.grant("a0", {"cpu": 1000}, now=1.0)
    ledger.update_node(Node("a", {"cpu": 4000}))
    with pytest.raises(UnknownResource):
        ledger.grant("a1", {"gpu": 1}, now=2.0)


def test_best_fit_compares_shares_of_capacity_not_amounts() -> None:
    # After the grant, a keeps 1000 of 4000 (a quarter), b 2000 of 16000 (an
    # eighth): b is the tighter fit though it keeps more millicores.
    ledger = ledger_with(Node("a", {"cpu": 4000}), Node("b", {"cpu": 16000}))
    ledger.grant("fill-a", {"cpu": 2000}, now=1.0, node="a")
    ledger.grant("fill-b", {"cpu": 13000}, now=1.0, node="b")
    assert ledger.grant("a1", {"cpu": 1000}, now=2.0).node == "b"


def test_best_fit_takes_the_first_of_equal_fits_by_name() -> None:
    ledger = ledger_with(Node("b", {"cpu": 4000}), Node("a", {"cpu": 4000}))
    assert ledger.grant("a1", {"cpu": 1000}, now=1.0).node == "a"


def test_best_fit_finds_an_exact_fit_whatever_the_nodes_name() -> None:
    # "0a" sorts before letters and digits alike: the walk starts at the first
    # node with exactly the amount asked, not after it.
    ledger = ledger_with(Node("0a", {"cpu": 1000}), Node("n1", {"cpu": 8000}))
    assert ledger.grant("a1", {"cpu": 1000}, now=1.0).node == "0a"


def test_best_fit_compares_four_feasible_nodes() -> None:
    # Walked by free cpu, the leftover shares are 0.5, 0.4, 0.3, 0.2, 0.1:
    # best fit stops after BEST_FIT_CANDIDATES (4) feasible nodes and takes
    # the best of those, n4, not n5.
    caps = {"n1": 2000, "n2": 5000, "n3": 10000, "n4": 20000, "n5": 50000}
    free = {"n1": 2000, "n2": 3000, "n3": 4000, "n4": 5000, "n5": 6000}
    ledger = ledger_with(*(Node(n, {"cpu": c}) for n, c in caps.items()))
    for n in caps:
        if caps[n] > free[n]:
            ledger.grant(f"fill-{n}", {"cpu": caps[n] - free[n]}, now=1.0, node=n)
    assert ledger.grant("a1", {"cpu": 1000}, now=2.0).node == "n4"


def test_best_fit_walks_the_resource_fewest_nodes_can_give() -> None:
    # Five nodes have the memory; seven the cpu (x1 and x2 lack memory). By
    # memory, t (1.5Gi free) comes first and fits best; by cpu, c1..c4 (less
    # cpu free than t) would fill the four candidates compared.
    nodes = [Node("t", {"cpu": 1500, "memory": 3 * GiB // 2})]
    nodes += [Node(f"c{i}", {"cpu": 1000 + 100 * i, "memory": 8 * GiB}) for i in range(1, 5)]
    nodes += [Node(f"x{i}", {"cpu": 8000, "memory": GiB // 2}) for i in (1, 2)]
    ledger = ledger_with(*nodes)
    assert ledger.grant("a1", {"cpu": 1000, "memory": GiB}, now=1.0).node == "t"


def test_a_named_node_offering_nothing_says_so() -> None:
    ledger = ledger_with(Node("n1", {}))
    with pytest.raises(UnknownResource) as info:
        ledger.grant("a1", {"cpu": 1000}, now=1.0, node="n1")
    assert info.value.message == "resources.cpu: node n1 does not offer cpu (it offers nothing)"


def test_unknown_resource_on_a_named_node() -> None:
    ledger = ledger_with(Node("n1", {"cpu": 2000, "memory": GiB}))
    with pytest.raises(UnknownResource) as info:
        ledger.grant("a1", {"cpu": 1000, "gpu": 1, "asic.s19": 1}, now=1.0, node="n1")
    assert info.value.message == (
        "resources.asic.s19: node n1 does not offer asic.s19, gpu (it offers cpu, memory)"
    )
    assert info.value.data == {"field": "resources.asic.s19", "node": "n1"}
    assert ledger.free("n1") == {"cpu": 2000, "memory": GiB}


def test_unknown_resource_when_no_node_offers_it() -> None:
    ledger = ledger_with(Node("n1", {"cpu": 2000}), Node("n2", {"cpu": 2000, "fpga": 1}))
    with pytest.raises(UnknownResource) as info:
        ledger.grant("a1", {"cpu": 1000, "license.matlab": 1}, now=1.0)
    assert info.value.message == "resources.license.matlab: no node has license.matlab"
    with pytest.raises(UnknownResource) as two:
        ledger.grant("a1", {"cpu": 1000, "license.matlab": 1, "asic.s19": 1}, now=1.0)
    assert two.value.message == "resources.asic.s19: no node has asic.s19, license.matlab"
    assert info.value.data == {"field": "resources.license.matlab"}
    assert ledger.grant("a2", {"fpga": 1}, now=1.0).node == "n2"


def test_a_resource_whose_last_node_is_gone_is_unknown() -> None:
    ledger = ledger_with(Node("n1", {"cpu": 2000}), Node("n2", {"fpga": 2}))
    ledger.remove_node("n2", force=False, now=1.0)
    with pytest.raises(UnknownResource):
        ledger.grant("a1", {"fpga": 1}, now=2.0)


@pytest.mark.parametrize(
    ("state", "health", "reason"),
    [
        (NodeState.DRAINING, Health.HEALTHY, "is draining"),
        (NodeState.CORDONED, Health.HEALTHY, "is cordoned"),
        (NodeState.SUSPECT, Health.HEALTHY, "is suspect"),
        (NodeState.DOWN, Health.HEALTHY, "is down"),
        (NodeState.READY, Health.UNHEALTHY, "is unhealthy"),
        (NodeState.DOWN, Health.UNHEALTHY, "is down"),
    ],
)
def test_unschedulable_nodes_grant_nothing(state: NodeState, health: Health, reason: str) -> None:
    ledger = ledger_with(Node("n1", {"cpu": 8000}, state=state, health=health))
    with pytest.raises(InsufficientResources) as named:
        ledger.grant("a1", {"cpu": 1000}, now=1.0, node="n1")
    assert named.value.message == f"Node n1 {reason}"
    assert named.value.data["node_reasons"] == {"n1": reason}
    assert named.value.shortages == []
    assert named.value.data["nodes_considered"] == 1
    # Not busy: waiting for a release would not help, the node's state must change.
    code = Code.UNHEALTHY if state is NodeState.READY else Code.NOT_READY
    assert (named.value.failure.code, named.value.failure.kind) == (code, Kind.CONDITION)
    with pytest.raises(InsufficientResources) as auto:
        ledger.grant("a1", {"cpu": 1000}, now=1.0)
    assert auto.value.message == f"Node n1 {reason}"
    assert ledger.free("n1") == {"cpu": 8000}


def test_degraded_node_is_still_schedulable() -> None:
    ledger = ledger_with(Node("n1", {"cpu": 8000}, health=Health.DEGRADED))
    assert ledger.grant("a1", {"cpu": 1000}, now=1.0).node == "n1"


def test_auto_grant_skips_unschedulable_tighter_node() -> None:
    ledger = ledger_with(
        Node("tight", {"cpu": 1000}, state=NodeState.CORDONED), Node("roomy", {"cpu": 9000})
    )
    assert ledger.grant("a1", {"cpu": 1000}, now=1.0).node == "roomy"


@pytest.mark.parametrize("request_", [{}, {"cpu": 0}, {"cpu": -1000}, {"cpu": 1000, "gpu": 0}])
def test_empty_or_non_positive_request_is_refused(request_: dict[str, int]) -> None:
    ledger = ledger_with(Node("n1", {"cpu": 8000, "gpu": 1}))
    with pytest.raises(InvalidInput) as info:
        ledger.grant("a1", request_, now=1.0, node="n1")
    assert info.value.message == ("resources: request at least one resource with a positive amount")
    assert info.value.data == {"field": "resources"}
    assert ledger.free("n1") == {"cpu": 8000, "gpu": 1}


def test_grant_with_an_active_id_is_refused() -> None:
    ledger = ledger_with(Node("n1", {"cpu": 4000}))
    ledger.grant("a1", {"cpu": 1000}, now=1.0)
    with pytest.raises(InvalidInput) as info:
        ledger.grant("a1", {"cpu": 2000}, now=2.0)
    assert info.value.message == "id: allocation a1 is already active"
    assert info.value.data == {"field": "id"}
    assert ledger.free("n1") == {"cpu": 3000}
    ledger.release("a1", ReleaseReason.COMPLETED, 3.0)
    assert ledger.free("n1") == {"cpu": 4000}
    assert ledger.grant("a1", {"cpu": 2000}, now=4.0).resources == {"cpu": 2000}


# -- devices ---------------------------------------------------------------------------------------


def test_devices_are_named_and_returned_in_order() -> None:
    ledger = ledger_with(Node("n1", {"cpu": 8000}, devices={"gpu": gpus("g0", "g1", "g2", "g3")}))
    assert ledger.node("n1").resources == {"cpu": 8000, "gpu": 4}
    a1 = ledger.grant("a1", {"gpu": 2}, now=1.0)
    a2 = ledger.grant("a2", {"gpu": 1, "cpu": 1000}, now=1.0)
    assert a1.devices == {"gpu": ("g0", "g1")}
    assert a2.devices == {"gpu": ("g2",)}
    assert ledger.free_devices("n1") == {"gpu": ["g3"]}
    ledger.release("a1", ReleaseReason.COMPLETED, 2.0)
    assert ledger.free_devices("n1") == {"gpu": ["g0", "g1", "g3"]}
    a3 = ledger.grant("a3", {"gpu": 3}, now=3.0)
    assert a3.devices == {"gpu": ("g0", "g1", "g3")}
    assert ledger.free_devices("n1") == {"gpu": []}
    assert ledger.free("n1") == {"cpu": 7000, "gpu": 0}
    ledger.release("a2", ReleaseReason.COMPLETED, 4.0)
    ledger.release("a3", ReleaseReason.COMPLETED, 4.0)
    assert ledger.free_devices("n1") == {"gpu": ["g0", "g1", "g2", "g3"]}


def test_devices_follow_declared_order_not_id_order() -> None:
    ledger = ledger_with(Node("n1", {}, devices={"asic.s19": gpus("s-9", "s-1", "s-5")}))
    a1 = ledger.grant("a1", {"asic.s19": 2}, now=1.0)
    assert a1.devices == {"asic.s19": ("s-9", "s-1")}
    ledger.release("a1", ReleaseReason.RELEASED, 2.0)
    assert ledger.free_devices("n1") == {"asic.s19": ["s-9", "s-1", "s-5"]}


def two_kinds() -> Ledger:
    # fpga is listed first: a requested kind after an unrequested one is
    # still taken.
    return ledger_with(
        Node(
            "n1",
            {"cpu": 8000},
            devices={"fpga": gpus("f0", "f1"), "gpu": gpus("g0", "g1", "g2", "g3")},
        )
    )


def test_named_devices_are_taken_as_named() -> None:
    ledger = two_kinds()
    alloc = ledger.grant("a1", {"cpu": 1000, "gpu": 2}, now=1.0, devices={"gpu": ["g2", "g0"]})
    assert alloc.devices == {"gpu": ("g2", "g0")}
    assert ledger.free_devices("n1") == {"fpga": ["f0", "f1"], "gpu": ["g1", "g3"]}


def test_a_kind_not_named_takes_its_first_free_devices() -> None:
    ledger = two_kinds()
    alloc = ledger.grant("a1", {"gpu": 2, "fpga": 1}, now=1.0, devices={"gpu": ["g3", "g1"]})
    assert alloc.devices == {"fpga": ("f0",), "gpu": ("g3", "g1")}


@pytest.mark.parametrize(
    ("count", "named", "shown"),
    [
        (1, ["g0"], "g0"),  # busy: a1 holds it
        (2, ["g0", "g2"], "g0"),
        (2, ["g1"], "('g1',)"),  # too few
        (1, ["g1", "g2"], "('g1', 'g2')"),  # too many
        (2, ["g9", "g0"], "g0, g9"),  # every one busy or unknown is named
        (2, ["g1", "g1"], "('g1', 'g1')"),  # one device twice
    ],
)
def test_named_devices_that_cannot_be_taken_are_refused(
    count: int, named: list[str], shown: str
) -> None:
    ledger = two_kinds()
    ledger.grant("a1", {"gpu": 1}, now=1.0)
    with pytest.raises(InvalidInput) as info:
        ledger.grant("a2", {"gpu": count}, now=1.0, devices={"gpu": named})
    assert info.value.message == (
        f"devices.gpu: {shown} on node n1 cannot be taken: {count} free device(s) needed"
    )
    assert info.value.data == {"field": "devices.gpu"}
    assert ledger.free_devices("n1")["gpu"] == ["g1", "g2", "g3"]


def test_resources_without_devices_grant_no_device_names() -> None:
    ledger = ledger_with(Node("n1", {"fpga": 2}, devices={"gpu": gpus("g0")}))
    alloc = ledger.grant("a1", {"fpga": 1}, now=1.0)
    assert alloc.devices == {}


def test_device_shortage_message() -> None:
    ledger = ledger_with(Node("n1", {}, devices={"gpu": gpus("g0", "g1")}))
    ledger.grant("a1", {"gpu": 2}, now=1.0)
    with pytest.raises(InsufficientResources) as info:
        ledger.grant("a2", {"gpu": 1}, now=1.0, node="n1")
    assert info.value.message == "Insufficient gpu on node n1: 0 available, 1 requested"


# -- updates ---------------------------------------------------------------------------------------


def test_update_below_allocated_is_refused_naming_the_resource() -> None:
    ledger = ledger_with(Node("n1", {"cpu": 4000, "memory": 8 * GiB}))
    ledger.grant("a1", {"cpu": 2000, "memory": 6 * GiB}, now=1.0)
    with pytest.raises(CapacityBelowAllocated) as info:
        ledger.update_node(Node("n1", {"cpu": 1000, "memory": 8 * GiB}))
    assert info.value.message == (
        "resources.cpu: cannot lower capacity of node n1 to 1; 2 is allocated"
    )
    assert info.value.data == {"resource": "cpu", "node": "n1"}
    with pytest.raises(CapacityBelowAllocated) as info:
        ledger.update_node(Node("n1", {"cpu": 4000, "memory": 4 * GiB}))
    assert info.value.message == (
        "resources.memory: cannot lower capacity of node n1 to 4Gi; 6Gi is allocated"
    )
    with pytest.raises(CapacityBelowAllocated) as info:
        ledger.update_node(Node("n1", {"cpu": 4000}))
    assert info.value.message == (
        "resources.memory: cannot lower capacity of node n1 to 0; 6Gi is allocated"
    )
    assert ledger.node("n1").resources == {"cpu": 4000, "memory": 8 * GiB}
    assert ledger.free("n1") == {"cpu": 2000, "memory": 2 * GiB}


def test_update_down_to_exactly_allocated_is_allowed() -> None:
    ledger = ledger_with(Node("n1", {"cpu": 4000, "fpga": 2}))
    ledger.grant("a1", {"cpu": 2000}, now=1.0)
    ledger.update_node(Node("n1", {"cpu": 2000, "gpu": 1}, labels={"zone": "b"}))
    assert ledger.free("n1") == {"cpu": 0, "gpu": 1}
    assert ledger.allocated("n1") == {"cpu": 2000, "gpu": 0}
    assert ledger.node("n1").labels == {"zone": "b"}
    ledger.release("a1", ReleaseReason.COMPLETED, 2.0)
    assert ledger.free("n1") == {"cpu": 2000, "gpu": 1}


def test_update_raising_capacity_is_usable_at_once() -> None:
    ledger = ledger_with(Node("n1", {"cpu": 1000}))
    ledger.grant("a1", {"cpu": 1000}, now=1.0)
    ledger.update_node(Node("n1", {"cpu": 3000}))
    assert ledger.grant("a2", {"cpu": 2000}, now=2.0).node == "n1"
    assert ledger.free("n1") == {"cpu": 0}


def test_allocated_device_removal_is_refused() -> None:
    ledger = ledger_with(Node("n1", {}, devices={"gpu": gpus("g0", "g1", "g2")}))
    ledger.grant("a1", {"gpu": 2}, now=1.0)
    with pytest.raises(CapacityBelowAllocated) as info:
        ledger.update_node(Node("n1", {}, devices={"gpu": gpus("g0", "g2", "g5")}))
    assert info.value.message == (
        "devices.gpu: devices g1 of node n1 are allocated and cannot be removed"
    )
    assert info.value.data == {"resource": "gpu", "node": "n1"}
    assert ledger.free_devices("n1") == {"gpu": ["g2"]}
    with pytest.raises(CapacityBelowAllocated) as both:
        ledger.update_node(Node("n1", {}, devices={"gpu": gpus("g2", "g5", "g6")}))
    assert both.value.message == (
        "devices.gpu: devices g0, g1 of node n1 are allocated and cannot be removed"
    )


def test_update_may_swap_free_devices() -> None:
    ledger = ledger_with(Node("n1", {}, devices={"gpu": gpus("g0", "g1", "g2")}))
    ledger.grant("a1", {"gpu": 1}, now=1.0)
    ledger.update_node(Node("n1", {}, devices={"gpu": gpus("g7", "g0", "g8", "g9")}))
    assert ledger.free("n1") == {"gpu": 3}
    assert ledger.free_devices("n1") == {"gpu": ["g7", "g8", "g9"]}
    assert ledger.grant("a2", {"gpu": 2}, now=2.0).devices == {"gpu": ("g7", "g8")}
    ledger.release("a1", ReleaseReason.COMPLETED, 3.0)
    assert ledger.free_devices("n1") == {"gpu": ["g0", "g9"]}


def test_update_to_draining_stops_auto_grants() -> None:
    ledger = ledger_with(Node("n1", {"cpu": 4000}))
    ledger.update_node(Node("n1", {"cpu": 4000}, state=NodeState.DRAINING))
    with pytest.raises(InsufficientResources) as info:
        ledger.grant("a1", {"cpu": 1000}, now=1.0)
    assert info.value.message == "Node n1 is draining"
    ledger.update_node(Node("n1", {"cpu": 4000}))
    assert ledger.grant("a1", {"cpu": 1000}, now=2.0).node == "n1"


# -- release, remove -------------------------------------------------------------------------------


def test_release_returns_the_released_value() -> None:
    ledger = ledger_with(Node("n1", {"cpu": 4000}, devices={"gpu": gpus("g0", "g1")}))
    alloc = ledger.grant("a1", {"cpu": 1000, "gpu": 1}, now=10.0, owner="bob")
    released = ledger.release("a1", ReleaseReason.COMPLETED, 20.0)
    assert released == Allocation(
        "a1",
        "n1",
        {"cpu": 1000, "gpu": 1},
        {"gpu": ("g0",)},
        "bob",
        {},
        AllocationState.RELEASED,
        10.0,
        ReleaseReason.COMPLETED,
        20.0,
    )
    assert released.active is False
    assert alloc.active is True
    assert ledger.free("n1") == {"cpu": 4000, "gpu": 2}
    assert dict(ledger.active()) == {}
    with pytest.raises(AllocationNotFound) as info:
        ledger.release("a1", ReleaseReason.COMPLETED, 30.0)
    assert info.value.message == "allocation a1 is not active"
    assert info.value.data == {"id": "a1"}
    assert ledger.free("n1") == {"cpu": 4000, "gpu": 2}


def test_undo_takes_back_a_grant() -> None:
    ledger = ledger_with(Node("n1", {"cpu": 4000}))
    alloc = ledger.grant("a1", {"cpu": 1000}, now=1.0)
    ledger.undo(alloc)
    ledger.undo(alloc)
    assert ledger.free("n1") == {"cpu": 4000}
    assert dict(ledger.active()) == {}


def test_remove_node_with_allocations_needs_force() -> None:
    ledger = ledger_with(Node("n1", {"cpu": 4000}), Node("n2", {"cpu": 4000}))
    ledger.grant("a1", {"cpu": 1000}, now=1.0, node="n1")
    ledger.grant("a2", {"cpu": 1000}, now=1.0, node="n1")
    ledger.grant("b1", {"cpu": 1000}, now=1.0, node="n2")
    with pytest.raises(NodeHasAllocations) as info:
        ledger.remove_node("n1", force=False, now=2.0)
    assert info.value.message == (
        "node n1 has 2 active allocation(s); release them or delete with force=true"
    )
    assert info.value.data == {"node": "n1", "active_allocations": 2}
    assert ledger.free("n1") == {"cpu": 2000}

    released = ledger.remove_node("n1", force=True, now=3.0)
    assert [(a.id, a.state, a.reason, a.released_at) for a in released] == [
        ("a1", AllocationState.RELEASED, ReleaseReason.NODE_DELETED, 3.0),
        ("a2", AllocationState.RELEASED, ReleaseReason.NODE_DELETED, 3.0),
    ]
    assert list(ledger.nodes) == ["n2"]
    assert list(ledger.active()) == ["b1"]
    with pytest.raises(NodeNotFound):
        ledger.node("n1")
    assert ledger.grant("a3", {"cpu": 3000}, now=4.0).node == "n2"


def test_remove_idle_node_without_force() -> None:
    ledger = ledger_with(Node("n1", {"cpu": 4000}))
    ledger.grant("a1", {"cpu": 1000}, now=1.0)
    ledger.release("a1", ReleaseReason.COMPLETED, 2.0)
    assert ledger.remove_node("n1", force=False, now=3.0) == []
    assert dict(ledger.nodes) == {}
    with pytest.raises(UnknownResource):
        ledger.grant("a2", {"cpu": 1000}, now=4.0)


def test_readding_a_removed_node_starts_fresh() -> None:
    ledger = ledger_with(Node("n1", {"cpu": 4000}))
    ledger.grant("a1", {"cpu": 4000}, now=1.0)
    ledger.remove_node("n1", force=True, now=2.0)
    ledger.add_node(Node("n1", {"cpu": 2000}))
    assert ledger.free("n1") == {"cpu": 2000}
    assert ledger.grant("a2", {"cpu": 2000}, now=3.0).node == "n1"


# -- another writer's state ------------------------------------------------------------------------


def test_replace_node_takes_the_stores_word() -> None:
    ledger = ledger_with(Node("n1", {"cpu": 4000}, devices={"gpu": gpus("g0", "g1")}))
    ledger.grant("mine", {"cpu": 1000, "gpu": 1}, now=1.0)
    theirs = Allocation(
        "theirs",
        "n1",
        {"cpu": 3000, "gpu": 1},
        {"gpu": ("g1",)},
        None,
        {},
        AllocationState.ACTIVE,
        2.0,
    )
    ledger.replace_node(
        Node("n1", {"cpu": 4000}, devices={"gpu": gpus("g0", "g1")}, labels={"v": "2"}),
        [theirs],
    )
    assert list(ledger.active()) == ["theirs"]
    assert ledger.free("n1") == {"cpu": 1000, "gpu": 1}
    assert ledger.free_devices("n1") == {"gpu": ["g0"]}
    assert ledger.node("n1").labels == {"v": "2"}
    assert ledger.grant("a2", {"gpu": 1}, now=3.0).devices == {"gpu": ("g0",)}
    with pytest.raises(InsufficientResources):
        ledger.grant("a3", {"cpu": 1001}, now=3.0)


def test_replace_node_adds_an_unknown_node() -> None:
    ledger = Ledger()
    alloc = Allocation("x", "n9", {"cpu": 500}, {}, None, {}, AllocationState.ACTIVE, 1.0)
    ledger.replace_node(Node("n9", {"cpu": 1000}), [alloc])
    assert ledger.free("n9") == {"cpu": 500}
    assert ledger.grant("a1", {"cpu": 500}, now=2.0).node == "n9"


def test_forget_node_drops_node_and_allocations() -> None:
    ledger = ledger_with(Node("n1", {"cpu": 4000}), Node("n2", {"cpu": 1000}))
    ledger.grant("a1", {"cpu": 1000}, now=1.0, node="n1")
    ledger.grant("b1", {"cpu": 500}, now=1.0, node="n2")
    ledger.forget_node("n1")
    ledger.forget_node("never-there")
    assert list(ledger.nodes) == ["n2"]
    assert list(ledger.active()) == ["b1"]
    with pytest.raises(InsufficientResources) as info:
        ledger.grant("a2", {"cpu": 1000}, now=2.0)
    assert info.value.message == "Insufficient cpu on node n2: 500m available, 1 requested"


def test_restore_refuses_what_does_not_fit() -> None:
    ledger = ledger_with(Node("n1", {"cpu": 1000}))
    too_big = Allocation("x", "n1", {"cpu": 2000}, {}, None, {}, AllocationState.ACTIVE, 1.0)
    with pytest.raises(InsufficientResources) as info:
        ledger.restore(too_big)
    assert info.value.message == "Insufficient cpu on node n1: 1 available, 2 requested"
    assert info.value.data["nodes_considered"] == 1
    assert dict(ledger.active()) == {}


def test_rebuild_applies_only_active_allocations() -> None:
    active = Allocation(
        "a",
        "n1",
        {"cpu": 1000, "gpu": 1},
        {"gpu": ("g1",)},
        None,
        {},
        AllocationState.ACTIVE,
        1.0,
    )
    done = Allocation(
        "b",
        "n1",
        {"cpu": 3000},
        {},
        None,
        {},
        AllocationState.RELEASED,
        1.0,
        ReleaseReason.COMPLETED,
        2.0,
    )
    ledger = rebuild([Node("n1", {"cpu": 4000}, devices={"gpu": gpus("g0", "g1")})], [active, done])
    assert ledger.free("n1") == {"cpu": 3000, "gpu": 1}
    assert ledger.free_devices("n1") == {"gpu": ["g0"]}
    assert list(ledger.active()) == ["a"]


# -- the invariant, under random operations --------------------------------------------------------

NAMES = ["n1", "n2", "n3", "n4"]
RESOURCES = ["cpu", "memory", "gpu", "fpga"]
STATES = st.sampled_from([NodeState.READY] * 5 + list(NodeState)[1:])
HEALTHS = st.sampled_from([Health.HEALTHY] * 4 + [Health.DEGRADED, Health.UNHEALTHY])
REASONS = st.sampled_from([r for r in ReleaseReason if r is not ReleaseReason.NODE_DELETED])


def _node(
    name: str,
    cpu: int,
    memory: int,
    gpu_ids: list[int],
    fpga: int,
    state: NodeState,
    health: Health,
) -> Node:
    resources = {"cpu": cpu * 500, "memory": memory * GiB}
    if fpga:
        resources["fpga"] = fpga
    devices = {"gpu": gpus(*(f"{name}-g{i}" for i in gpu_ids))} if gpu_ids else {}
    return Node(name, resources, devices, state=state, health=health)


node_args = {
    "cpu": st.integers(min_value=1, max_value=16),
    "memory": st.integers(min_value=1, max_value=8),
    "gpu_ids": st.lists(st.integers(min_value=0, max_value=5), unique=True, max_size=4),
    "fpga": st.sampled_from([0, 1, 2, 3]),
    "state": STATES,
    "health": HEALTHS,
}
request_args = {
    "cpu": st.sampled_from([0, 1, 1, 2, 4, 8]),  # in 500m steps
    "memory": st.sampled_from([0, 0, 1, 2]),  # GiB
    "gpu": st.sampled_from([0, 0, 1, 1, 2, 3]),
    "fpga": st.sampled_from([0, 0, 0, 1]),
}


class LedgerMachine(RuleBasedStateMachine):
    """Drives a Ledger at random next to a plain model and checks the invariant."""

    def __init__(self) -> None:
        super().__init__()
        self.ledger = Ledger()
        self.nodes: dict[str, Node] = {}
        self.active: dict[str, Allocation] = {}
        self.released: list[str] = []
        self.counter = 0
        self.now = 0.0

    # -- model helpers --

    def _tick(self) -> float:
        self.now += 1.0
        return self.now

    def _used(self, name: str) -> dict[str, int]:
        used = dict.fromkeys(self.nodes[name].resources, 0)
        for alloc in self.active.values():
            if alloc.node == name:
                for r, q in alloc.resources.items():
                    used[r] += q
        return used

    def _free(self, name: str) -> dict[str, int]:
        used = self._used(name)
        return {r: cap - used[r] for r, cap in self.nodes[name].resources.items()}

    def _held(self, name: str) -> set[str]:
        return {d for a in self.active.values() if a.node == name for d in a.devices.get("gpu", ())}

    def _free_gpus(self, name: str) -> list[str]:
        held = self._held(name)
        return [d.id for d in self.nodes[name].devices.get("gpu", ()) if d.id not in held]

    def _fits(self, name: str, request: dict[str, int]) -> bool:
        free = self._free(name)
        return all(free.get(r, 0) >= q for r, q in request.items())

    # -- rules --

    @rule(name=st.sampled_from(NAMES), **node_args)
    def register(
        self,
        name: str,
        cpu: int,
        memory: int,
        gpu_ids: list[int],
        fpga: int,
        state: NodeState,
        health: Health,
    ) -> None:
        node = _node(name, cpu, memory, gpu_ids, fpga, state, health)
        if name in self.nodes:
            with pytest.raises(NodeExists):
                self.ledger.add_node(node)
            return
        stored = self.ledger.add_node(node)
        assert stored.resources == {**node.resources, **({"gpu": len(gpu_ids)} if gpu_ids else {})}
        self.nodes[name] = stored

    @rule(name=st.sampled_from(NAMES), **node_args)
    def update(
        self,
        name: str,
        cpu: int,
        memory: int,
        gpu_ids: list[int],
        fpga: int,
        state: NodeState,
        health: Health,
    ) -> None:
        node = _node(name, cpu, memory, gpu_ids, fpga, state, health)
        if name not in self.nodes:
            with pytest.raises(NodeNotFound):
                self.ledger.update_node(node)
            return
        self._update(node)

    @precondition(lambda self: any(node.devices for node in self.nodes.values()))
    @rule(data=st.data(), add=st.booleans())
    def swap_a_device(self, data: st.DataObject, add: bool) -> None:
        # Drop one device (perhaps a held one) and maybe add a new one; nothing else changes.
        name = data.draw(st.sampled_from(sorted(n for n, v in self.nodes.items() if v.devices)))
        node = self.nodes[name]
        ids = [d.id for d in node.devices["gpu"]]
        drop = data.draw(st.sampled_from(ids))
        self.counter += 1
        kept = [i for i in ids if i != drop] + ([f"{name}-new{self.counter}"] if add else [])
        resources = {r: q for r, q in node.resources.items() if r != "gpu"}
        devices = {"gpu": gpus(*kept)} if kept else {}
        self._update(Node(name, resources, devices, state=node.state, health=node.health))

    def _update(self, node: Node) -> None:
        name = node.name
        new = validated_node(node)
        used = self._used(name)
        too_low = sorted(r for r, u in used.items() if u and new.resources.get(r, 0) < u)
        offered = {d.id for d in new.devices.get("gpu", ())}
        removed = self._held(name) - offered
        if too_low or removed:
            with pytest.raises(CapacityBelowAllocated) as info:
                self.ledger.update_node(node)
            event("update: refused, " + ("capacity" if too_low else "devices"))
            expected = too_low[0] if too_low else "gpu"
            assert info.value.data == {"resource": expected, "node": name}
            field = "resources" if too_low else "devices"
            assert info.value.message.startswith(f"{field}.{expected}: ")
            return
        event("update: accepted" + (" with devices held" if self._held(name) else ""))
        self.nodes[name] = self.ledger.update_node(node)

    @initialize(
        gpus_1=st.lists(st.integers(min_value=0, max_value=5), unique=True, min_size=1, max_size=4),
        gpus_2=st.lists(st.integers(min_value=0, max_value=5), unique=True, max_size=4),
        cpu=st.integers(min_value=2, max_value=16),
    )
    def start(self, gpus_1: list[int], gpus_2: list[int], cpu: int) -> None:
        for node in (
            _node("n1", cpu, 4, gpus_1, 2, NodeState.READY, Health.HEALTHY),
            _node("n2", 16, 8, gpus_2, 0, NodeState.READY, Health.HEALTHY),
        ):
            self.nodes[node.name] = self.ledger.add_node(node)

    def _request(self, cpu: int, memory: int, gpu: int, fpga: int) -> tuple[str, dict[str, int]]:
        request = {
            r: q
            for r, q in (("cpu", cpu * 500), ("memory", memory * GiB), ("gpu", gpu), ("fpga", fpga))
            if q
        }
        self.counter += 1
        return f"a{self.counter}", request

    @rule(**request_args)
    def grant_auto(self, cpu: int, memory: int, gpu: int, fpga: int) -> None:
        alloc_id, request = self._request(cpu, memory, gpu, fpga)
        now = self._tick()
        if not request:
            with pytest.raises(InvalidInput):
                self.ledger.grant(alloc_id, request, now=now)
            return
        self._grant_auto(alloc_id, request, now)

    @rule(data=st.data(), **request_args)
    def grant_named(self, data: st.DataObject, cpu: int, memory: int, gpu: int, fpga: int) -> None:
        name = data.draw(st.sampled_from(sorted(self.nodes) * 4 + ["ghost"]))
        alloc_id, request = self._request(cpu, memory, gpu, fpga)
        now = self._tick()
        if not request:
            with pytest.raises(InvalidInput):
                self.ledger.grant(alloc_id, request, now=now, node=name)
            return
        self._grant_named(alloc_id, request, now, name)

    def _grant_named(self, alloc_id: str, request: dict[str, int], now: float, name: str) -> None:
        if name not in self.nodes:
            with pytest.raises(NodeNotFound):
                self.ledger.grant(alloc_id, request, now=now, node=name)
            event("grant: named, no such node")
            return
        node = self.nodes[name]
        unknown = sorted(r for r in request if r not in node.resources)
        if unknown:
            with pytest.raises(UnknownResource) as unknown_info:
                self.ledger.grant(alloc_id, request, now=now, node=name)
            assert unknown_info.value.data == {"field": f"resources.{unknown[0]}", "node": name}
            return
        if not node.schedulable:
            with pytest.raises(InsufficientResources) as state_info:
                self.ledger.grant(alloc_id, request, now=now, node=name)
            assert state_info.value.shortages == []
            assert list(state_info.value.data["node_reasons"]) == [name]
            return
        free = self._free(name)
        shortages = [(name, r, free[r], q) for r, q in request.items() if free[r] < q]
        if shortages:
            with pytest.raises(InsufficientResources) as short_info:
                self.ledger.grant(alloc_id, request, now=now, node=name)
            assert _short(short_info.value) == shortages
            event("grant: named, short")
            return
        expected_gpus = self._free_gpus(name)[: request.get("gpu", 0)]
        alloc = self.ledger.grant(alloc_id, request, now=now, node=name)
        event("grant: named, granted")
        self._check_granted(alloc, request, now, name, expected_gpus)

    def _grant_auto(self, alloc_id: str, request: dict[str, int], now: float) -> None:
        offered = {r for n in self.nodes.values() for r in n.resources}
        unknown = sorted(set(request) - offered)
        if unknown:
            with pytest.raises(UnknownResource) as unknown_info:
                self.ledger.grant(alloc_id, request, now=now)
            assert unknown_info.value.data == {"field": f"resources.{unknown[0]}"}
            return
        feasible = [
            n for n in sorted(self.nodes) if self.nodes[n].schedulable and self._fits(n, request)
        ]
        if not feasible:
            shortages = []
            reasons = {}
            for n in sorted(self.nodes):
                if not self.nodes[n].schedulable:
                    reasons[n] = f"is {self.nodes[n].state.value}"
                    if self.nodes[n].state is NodeState.READY:
                        reasons[n] = f"is {self.nodes[n].health.value}"
                    continue
                free = self._free(n)
                shortages += [
                    (n, r, free.get(r, 0), q, r in self.nodes[n].resources)
                    for r, q in request.items()
                    if free.get(r, 0) < q
                ]
            with pytest.raises(InsufficientResources) as info:
                self.ledger.grant(alloc_id, request, now=now)
            assert _short(info.value, offered=True) == shortages
            assert info.value.data["node_reasons"] == reasons
            assert info.value.data["nodes_considered"] == len(self.nodes)
            event("grant: auto, refused")
            return
        expected = {n: self._free_gpus(n)[: request.get("gpu", 0)] for n in feasible}
        alloc = self.ledger.grant(alloc_id, request, now=now)
        event("grant: auto, granted")
        assert alloc.node in feasible
        self._check_granted(alloc, request, now, alloc.node, expected[alloc.node])

    def _check_granted(
        self, alloc: Allocation, request: dict[str, int], now: float, name: str, gpus_: list[str]
    ) -> None:
        assert alloc.node == name
        assert alloc.resources == request
        assert alloc.state is AllocationState.ACTIVE
        assert alloc.created_at == now
        assert alloc.devices == ({"gpu": tuple(gpus_)} if "gpu" in request else {})
        if "gpu" in request:
            event(f"grant: {len(gpus_)} gpus")
        self.active[alloc.id] = alloc

    @precondition(lambda self: bool(self.active))
    @rule(data=st.data(), reason=REASONS)
    def release(self, data: st.DataObject, reason: ReleaseReason) -> None:
        alloc_id = data.draw(st.sampled_from(sorted(self.active)))
        now = self._tick()
        released = self.ledger.release(alloc_id, reason, now)
        alloc = self.active.pop(alloc_id)
        assert released == alloc.released(reason, now)
        self.released.append(alloc_id)
        event("release: with devices" if alloc.devices else "release: no devices")

    @precondition(lambda self: bool(self.released))
    @rule(data=st.data())
    def release_again(self, data: st.DataObject) -> None:
        alloc_id = data.draw(st.sampled_from(self.released))
        with pytest.raises(AllocationNotFound):
            self.ledger.release(alloc_id, ReleaseReason.COMPLETED, self._tick())

    @rule(name=st.sampled_from(NAMES), force=st.booleans())
    def delete(self, name: str, force: bool) -> None:
        now = self._tick()
        if name not in self.nodes:
            with pytest.raises(NodeNotFound):
                self.ledger.remove_node(name, force=force, now=now)
            return
        on_node = sorted(a for a, alloc in self.active.items() if alloc.node == name)
        if on_node and not force:
            with pytest.raises(NodeHasAllocations) as info:
                self.ledger.remove_node(name, force=force, now=now)
            assert info.value.data == {"node": name, "active_allocations": len(on_node)}
            return
        released = self.ledger.remove_node(name, force=force, now=now)
        assert released == [
            self.active[a].released(ReleaseReason.NODE_DELETED, now) for a in on_node
        ]
        for a in on_node:
            del self.active[a]
            self.released.append(a)
        del self.nodes[name]

    @precondition(lambda self: bool(self.nodes))
    @rule(data=st.data())
    def reload_from_store(self, data: st.DataObject) -> None:
        # Another writer's view that equals ours: replacing must change nothing.
        name = data.draw(st.sampled_from(sorted(self.nodes)))
        on_node = [a for a in self.active.values() if a.node == name]
        self.ledger.replace_node(self.nodes[name], on_node)

    @precondition(lambda self: bool(self.nodes))
    @rule(data=st.data())
    def forget(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.nodes)))
        self.ledger.forget_node(name)
        del self.nodes[name]
        self.active = {a: alloc for a, alloc in self.active.items() if alloc.node != name}

    # -- invariants --

    @invariant()
    def never_oversubscribed(self) -> None:
        assert set(self.ledger.nodes) == set(self.nodes)
        assert set(self.ledger.active()) == set(self.active)
        for name, node in self.nodes.items():
            assert self.ledger.node(name) == node
            free = self.ledger.free(name)
            assert set(free) == set(node.resources)
            used = self._used(name)
            for r, cap in node.resources.items():
                assert free[r] >= 0
                assert free[r] + used[r] == cap
            assert self.ledger.allocated(name) == used
            on_node = sorted(a for a, alloc in self.active.items() if alloc.node == name)
            assert [a.id for a in self.ledger.allocations_on(name)] == on_node

    @invariant()
    def devices_held_once_and_as_named(self) -> None:
        seen: dict[str, str] = {}
        for alloc in self.active.values():
            for resource, ids in alloc.devices.items():
                assert len(ids) == alloc.resources[resource]
                for d in ids:
                    assert d not in seen, f"{d} held by {seen.get(d)} and {alloc.id}"
                    seen[d] = alloc.id
        for name, node in self.nodes.items():
            declared = [d.id for d in node.devices.get("gpu", ())]
            free_ids = self.ledger.free_devices(name).get("gpu", [])
            assert free_ids == self._free_gpus(name)
            assert set(declared) - set(free_ids) == self._held(name)
            if declared:
                assert len(free_ids) == self.ledger.free(name)["gpu"]


TestLedgerMachine = LedgerMachine.TestCase
TestLedgerMachine.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
