"""Which devices a task gets (``core/scheduling/devices.py``), function by
function with literal answers: share slots, the link score of two devices
and of a set, and ``choose`` on one node for each of its paths (too few,
matching terms, one device, a set compared exhaustively or grown greedily,
shares). Written for the mutants of ``devices.py`` (docs/testing.md).
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from apportion.core.model import Device, Node
from apportion.core.scheduling import ClusterState, parse_constraints
from apportion.core.scheduling.capacity import NodeRec
from apportion.core.scheduling.devices import (
    _best_linked,
    _least_linked,
    choose,
    link,
    matching_free,
    set_link_score,
    share_devices,
)


def rec_of(*devices: Device, resource: str = "gpu") -> NodeRec:
    state = ClusterState([Node("n", {"cpu": 1000}, devices={resource: devices})])
    return state.nodes["n"]


def test_a_shared_device_is_so_many_slots_that_name_their_parent() -> None:
    card = Device("g0", "A100", 40, "uuid-0", "sn-0", {"numa": 1})
    assert share_devices(card, 3) == tuple(
        Device(f"g0/{k}", "A100", 40, "uuid-0", "sn-0", {"numa": 1, "parent": "g0", "shares": 3})
        for k in range(3)
    )


def test_two_devices_score_nvlink_either_way_switch_and_numa() -> None:
    a = Device("a", attrs={"nvlink": ["b"], "pcie_switch": "s0", "numa": 0})
    b = Device("b", attrs={"pcie_switch": "s0", "numa": 0})
    c = Device("c", attrs={"nvlink": ["a"], "pcie_switch": "s1", "numa": 0})
    d = Device("d", attrs={"pcie_switch": "s1", "numa": 1})
    bare = Device("e")
    assert [link(a, b), link(b, a), link(a, c), link(c, a), link(c, d), link(b, d)] == [
        7, 7, 5, 5, 2, 0]
    # No switch or NUMA node on either side is no link, not a shared "None".
    assert (link(bare, Device("f")), link(bare, a), link(a, bare)) == (0, 0, 0)
    assert set_link_score([a, b, c, d]) == 7 + 5 + 0 + 1 + 0 + 2
    assert set_link_score([a]) == 0


def test_choose_is_none_for_too_few_and_all_of_exactly_enough() -> None:
    rec = rec_of(Device("g0"), Device("g1"))
    assert choose(rec, "gpu", 3, ()) is None
    assert choose(rec, "gpu", 2, ()) == ("g0", "g1")
    assert choose(rec, "fpga", 1, ()) is None


def test_choose_keeps_to_the_devices_the_terms_match() -> None:
    rec = rec_of(Device("g0", "T4"), Device("g1", "A100"), Device("g2", "A100"))
    a100 = parse_constraints("gpu.model=A100").devices
    assert choose(rec, "gpu", 1, a100) == ("g1",)
    assert choose(rec, "gpu", 2, a100) == ("g1", "g2")
    assert choose(rec, "gpu", 3, a100) is None


def test_one_device_is_the_least_linked_and_a_set_the_best_linked() -> None:
    # g1 and g2 share NVLink, g3 and g0 nothing; every device has its own NUMA node.
    rec = rec_of(
        Device("g0", attrs={"numa": 0}), Device("g1", attrs={"nvlink": ["g2"], "numa": 1}),
        Device("g2", attrs={"numa": 2}), Device("g3", attrs={"numa": 3}),
    )
    assert choose(rec, "gpu", 1, ()) == ("g0",)
    assert choose(rec, "gpu", 2, ()) == ("g1", "g2")
    # All on one NUMA node but g0, which is linked to nothing: it goes first.
    rec = rec_of(
        Device("g0", attrs={"numa": 9}), Device("g1", attrs={"numa": 0}),
        Device("g2", attrs={"numa": 0}), Device("g3", attrs={"numa": 0}),
        Device("g4", attrs={"numa": 0}),
    )
    assert choose(rec, "gpu", 1, ()) == ("g0",)
    assert choose(rec, "gpu", 3, ()) == ("g1", "g2", "g3")


def test_a_large_set_is_grown_greedily_from_the_best_linked_device() -> None:
    # 12 choose 6 is 924 sets, more than EXHAUSTIVE_LIMIT: greedy. g6..g11
    # are all linked to each other (g6 the first with most links), the rest
    # to nothing.
    clique = [f"g{k}" for k in range(6, 12)]
    devices = [Device(f"g{k}") for k in range(6)] + [
        Device(g, attrs={"nvlink": [p for p in clique if p != g]}) for g in clique
    ]
    rec = rec_of(*devices)
    assert choose(rec, "gpu", 6, ()) == ("g6", "g7", "g8", "g9", "g10", "g11")
    # 12 choose 2 is 66 sets: every pair compared, the first best pair wins.
    assert choose(rec, "gpu", 2, ()) == ("g6", "g7")


def test_the_greedy_set_starts_from_the_device_with_most_links() -> None:
    # g9 has NVLink to g10 and g11 and shares a switch with g0: it starts,
    # then g10 and g11 (4 each) come before g0 (2).
    devices = [Device(f"g{k}") for k in range(9)] + [
        Device("g9", attrs={"nvlink": ["g10", "g11"], "pcie_switch": "s"}),
        Device("g10"), Device("g11"),
    ]
    devices[0] = Device("g0", attrs={"pcie_switch": "s"})
    rec = rec_of(*devices)
    assert choose(rec, "gpu", 4, ()) == ("g9", "g10", "g11", "g0")


def test_shares_come_from_one_device_with_the_fewest_free_slots() -> None:
    slots = (*share_devices(Device("g0"), 4), *share_devices(Device("g1"), 4))
    rec = rec_of(*slots, resource="gpu.shares")
    rec.free_devices["gpu.shares"] = ["g0/0", "g0/1", "g0/2", "g0/3", "g1/2", "g1/3"]
    assert choose(rec, "gpu.shares", 2, ()) == ("g1/2", "g1/3")
    assert choose(rec, "gpu.shares", 3, ()) == ("g0/0", "g0/1", "g0/2")


def test_up_to_200_sets_are_compared_one_by_one() -> None:
    # 20 choose 2 is 190 sets: exhaustive, so the best pair (g1 and g2,
    # NVLink and one NUMA node) wins. Grown greedily it would start from the
    # hub g0 (a switch shared with g3..g8, the most links in all) and take g3.
    devices = [Device("g0", attrs={"pcie_switch": "s"}),
               Device("g1", attrs={"nvlink": ["g2"], "numa": 0}), Device("g2", attrs={"numa": 0})]
    devices += [Device(f"g{k}", attrs={"pcie_switch": "s"}) for k in range(3, 9)]
    devices += [Device(f"g{k}") for k in range(9, 20)]
    assert choose(rec_of(*devices), "gpu", 2, ()) == ("g1", "g2")


def test_exactly_200_sets_are_still_compared_one_by_one() -> None:
    # 199 of 200 devices: 200 choose 199 is 200 sets, EXHAUSTIVE_LIMIT
    # itself. All share NUMA node 0 but g1, which has only NVLink to g0: the
    # fewest links, so the best set leaves it out. Grown greedily from g0
    # (the most links) it would take g1 second and leave out g199.
    devices = [Device("g0", attrs={"nvlink": ["g1"], "numa": 0}), Device("g1")]
    devices += [Device(f"g{k}", attrs={"numa": 0}) for k in range(2, 200)]
    assert choose(rec_of(*devices), "gpu", 199, ()) == (
        "g0", *(f"g{k}" for k in range(2, 200)))


@given(st.integers(1, 8), st.integers(1, 8), st.lists(st.integers(0, 7), max_size=7))
def test_devices_without_links_go_in_device_order_as_the_searches_pick(
        n: int, count: int, busy: list[int]) -> None:
    # Nothing links bare devices: every set scores 0, and the searches keep
    # the first in device order, which ``choose`` now returns at once.
    rec = rec_of(*(Device(f"g{k}") for k in range(n)))
    rec.free_devices["gpu"] = [d for k, d in enumerate(rec.free_devices["gpu"])
                               if k not in busy]
    free = [rec.devices["gpu"][d] for d in rec.free_devices["gpu"]]
    got = choose(rec, "gpu", count, ())
    if len(free) < count:
        assert got is None
    elif count == 1:
        assert got == (_least_linked(free).id,)
    else:
        assert got == tuple(d.id for d in _best_linked(free, count))


@given(st.lists(st.integers(0, 7), unique=True), st.integers(1, 9))
def test_plain_devices_without_terms_are_the_first_free_ones(free: list[int], count: int
                                                              ) -> None:
    # The shortcut for devices without links or slots against the general
    # path: the free ones in device order, filtered by no term, cut at count.
    rec = rec_of(*(Device(f"g{i}") for i in range(8)))
    assert "gpu" in rec.plain_devices
    rec.free_devices["gpu"] = [f"g{i}" for i in sorted(free)]
    ids = matching_free(rec, "gpu", ())
    assert choose(rec, "gpu", count, ()) == (tuple(ids[:count]) if len(ids) >= count else None)
