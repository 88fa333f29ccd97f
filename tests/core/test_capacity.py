"""Capacity summaries grouped by label, node and resource."""

from __future__ import annotations

import pytest

from apportion.core.capacity import ResourceTotals, summarize
from apportion.core.model import Node
from apportion.core.resources import Vector

GiB = 2**30

N1 = Node(
    "n1",
    {"cpu": 32000, "memory": 128 * GiB, "gpu": 4},
    labels={"facility": "texas-1", "type": "gpu", "zone": "a"},
)
N2 = Node("n2", {"cpu": 16000, "memory": 64 * GiB}, labels={"facility": "texas-1", "type": "cpu"})
N3 = Node("n3", {"cpu": 8000, "asic.s19": 10}, labels={"facility": "oslo", "type": "asic"})
N4 = Node("n4", {"cpu": 4000, "memory": 8 * GiB})  # no labels at all

CLUSTER: list[tuple[Node, Vector]] = [
    (N1, {"cpu": 10000, "memory": 32 * GiB, "gpu": 3}),
    (N2, {"cpu": 16000}),
    (N3, {"asic.s19": 4}),
    (N4, {}),
]
N1_ROW = {"cpu": (32000, 10000, 22000), "memory": (128 * GiB, 32 * GiB, 96 * GiB), "gpu": (4, 3, 1)}


def _table(group_by: str) -> dict[str, tuple[int, dict[str, tuple[int, int, int]]]]:
    return {
        g.group: (
            g.nodes,
            {r: (t.total, t.allocated, t.available) for r, t in g.resources.items()},
        )
        for g in summarize(CLUSTER, group_by)
    }


def test_group_by_facility_with_a_none_group() -> None:
    groups = summarize(CLUSTER, "facility")
    assert [g.group for g in groups] == ["(none)", "oslo", "texas-1"]
    assert _table("facility") == {
        "(none)": (1, {"cpu": (4000, 0, 4000), "memory": (8 * GiB, 0, 8 * GiB)}),
        "oslo": (1, {"cpu": (8000, 0, 8000), "asic.s19": (10, 4, 6)}),
        "texas-1": (
            2,
            {
                "cpu": (48000, 26000, 22000),
                "memory": (192 * GiB, 32 * GiB, 160 * GiB),
                "gpu": (4, 3, 1),
            },
        ),
    }


def test_group_by_type() -> None:
    assert _table("type") == {
        "(none)": (1, {"cpu": (4000, 0, 4000), "memory": (8 * GiB, 0, 8 * GiB)}),
        "asic": (1, {"cpu": (8000, 0, 8000), "asic.s19": (10, 4, 6)}),
        "cpu": (1, {"cpu": (16000, 16000, 0), "memory": (64 * GiB, 0, 64 * GiB)}),
        "gpu": (1, N1_ROW),
    }


def test_group_by_zone_puts_unlabelled_nodes_in_none() -> None:
    assert _table("zone") == {
        "(none)": (
            3,
            {
                "cpu": (28000, 16000, 12000),
                "memory": (72 * GiB, 0, 72 * GiB),
                "asic.s19": (10, 4, 6),
            },
        ),
        "a": (1, N1_ROW),
    }


def test_group_by_resource_counts_nodes_offering_it() -> None:
    assert _table("resource") == {
        "asic.s19": (1, {"asic.s19": (10, 4, 6)}),
        "cpu": (4, {"cpu": (60000, 26000, 34000)}),
        "gpu": (1, {"gpu": (4, 3, 1)}),
        "memory": (3, {"memory": (200 * GiB, 32 * GiB, 168 * GiB)}),
    }


def test_group_by_node() -> None:
    assert _table("node") == {
        "n1": (1, N1_ROW),
        "n2": (1, {"cpu": (16000, 16000, 0), "memory": (64 * GiB, 0, 64 * GiB)}),
        "n3": (1, {"cpu": (8000, 0, 8000), "asic.s19": (10, 4, 6)}),
        "n4": (1, {"cpu": (4000, 0, 4000), "memory": (8 * GiB, 0, 8 * GiB)}),
    }


@pytest.mark.parametrize("group_by", ["facility", "type", "zone", "node"])
def test_groups_add_up_to_the_cluster(group_by: str) -> None:
    totals: dict[str, list[int]] = {}
    nodes = 0
    for group in summarize(CLUSTER, group_by):
        nodes += group.nodes
        for resource, t in group.resources.items():
            acc = totals.setdefault(resource, [0, 0])
            acc[0] += t.total
            acc[1] += t.allocated
    assert nodes == 4
    assert totals == {
        "cpu": [60000, 26000],
        "memory": [200 * GiB, 32 * GiB],
        "gpu": [4, 3],
        "asic.s19": [10, 4],
    }


def test_empty_cluster_has_no_groups() -> None:
    assert summarize([], "facility") == []


def test_resource_totals_share() -> None:
    assert ResourceTotals(total=4, allocated=3).allocated_share == 0.75
    assert ResourceTotals(total=4, allocated=3).available == 1
    assert ResourceTotals().allocated_share == 0.0
    assert ResourceTotals().available == 0


def test_fragmentation_scattered_free_capacity_and_what_fits() -> None:
    from apportion.core.capacity import fragmentation_report

    free = [{"cpu": 2000, "gpu": 1}, {"cpu": 2000, "gpu": 1}, {"cpu": 4000, "gpu": 0}]
    resources, fits = fragmentation_report(free, [{"gpu": 2}, {"cpu": 4000}, {"gpu": 1}])
    assert [(r.resource, r.free, r.largest_block, r.nodes_with_free, round(r.index, 3))
            for r in resources] == [("cpu", 8000, 4000, 3, 0.5), ("gpu", 2, 1, 2, 0.5)]
    # Two free GPUs, but on two nodes: a two-GPU task fits nowhere.
    assert [(f.shape, f.fits, f.if_whole) for f in fits] == [
        ({"gpu": 2}, 0, 1), ({"cpu": 4000}, 1, 2), ({"gpu": 1}, 2, 2)]


def test_fragmentation_of_nothing_free_is_zero() -> None:
    from apportion.core.capacity import fragmentation_report

    resources, fits = fragmentation_report([{"cpu": 0}], [{"cpu": 1000}])
    assert resources == [] and [(f.fits, f.if_whole) for f in fits] == [(0, 0)]
