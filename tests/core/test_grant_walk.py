"""The plain grant's walk after its trimming (issue 13, h22-http): the same
node as the walk written with ``min`` and ``sum``, and the ledger's index
moved in place exactly as a remove and an add would have left it."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sortedcontainers import SortedList

from apportion.core.errors import InsufficientResources, UnknownResource
from apportion.core.ledger import Ledger, _move
from apportion.core.model import Health, Node, NodeState, ReleaseReason
from apportion.core.scheduling import engine
from apportion.core.scheduling.engine import BEST_FIT_CANDIDATES, choose_node, refuse
from sched_support import free_index


@dataclass
class Slot:
    node: Node
    free: dict[str, int]


def reference_choice(request: dict[str, int], index: dict[str, SortedList],
                     slots: dict[str, Slot]) -> str:
    """``choose_node`` as it was written before (9ce6a3c)."""
    offered = [r for r in request if index.get(r)]
    unknown = sorted(set(request) - set(offered))
    if unknown:
        raise UnknownResource(
            f"resources.{unknown[0]}: no node has {', '.join(unknown)}",
            field=f"resources.{unknown[0]}",
        )
    key, start = min(
        ((r, index[r].bisect_left((request[r], ""))) for r in request),
        key=lambda rs: len(index[rs[0]]) - rs[1],
    )
    best: tuple[float, str] | None = None
    seen = 0
    for _, name in index[key].islice(start):
        slot = slots[name]
        if not engine.admits(request, slot):
            continue
        cap = slot.node.resources
        waste = sum((slot.free[r] - q) / cap[r] for r, q in request.items())
        if best is None or waste < best[0]:
            best = (waste, name)
        seen += 1
        if seen >= BEST_FIT_CANDIDATES:
            break
    if best is None:
        refuse(request, slots)
    return best[1]


RESOURCES = ["cpu", "memory", "gpu"]
STATES = [(NodeState.READY, Health.HEALTHY)] * 4 + [
    (NodeState.READY, Health.DEGRADED), (NodeState.READY, Health.UNHEALTHY),
    (NodeState.DRAINING, Health.HEALTHY)]


@st.composite
def clusters(draw: st.DrawFn) -> tuple[dict[str, Slot], dict[str, int]]:
    slots: dict[str, Slot] = {}
    for i in range(draw(st.integers(0, 30))):
        offered = draw(st.lists(st.sampled_from(RESOURCES), min_size=1, unique=True))
        capacity = {r: draw(st.integers(1, 12)) for r in offered}
        state, health = draw(st.sampled_from(STATES))
        free = {r: draw(st.integers(0, q)) for r, q in capacity.items()}
        slots[f"n{i:02d}"] = Slot(Node(f"n{i:02d}", capacity, state=state, health=health), free)
    wanted = draw(st.lists(st.sampled_from(RESOURCES), min_size=1, unique=True))
    return slots, {r: draw(st.integers(1, 8)) for r in wanted}


def _outcome(choose: object, request: dict[str, int], slots: dict[str, Slot]) -> object:
    try:
        return choose(request, free_index(slots), slots)  # type: ignore[operator]
    except (UnknownResource, InsufficientResources) as exc:
        return type(exc).__name__, exc.to_dict()


@settings(max_examples=400, deadline=None)
@given(clusters())
def test_the_walk_chooses_as_the_walk_written_with_min_and_sum(
        case: tuple[dict[str, Slot], dict[str, int]]) -> None:
    slots, request = case
    assert _outcome(choose_node, request, slots) == _outcome(reference_choice, request, slots)


def _small_sublists(index: dict[str, SortedList]) -> dict[str, SortedList]:
    for listed in index.values():
        listed._reset(2)  # sublists of two: walks that start and run across their edges
    return index


@settings(max_examples=400, deadline=None)
@given(clusters())
def test_the_walk_over_the_sublists_chooses_as_islice_does(
        case: tuple[dict[str, Slot], dict[str, int]]) -> None:
    """``choose_node`` walks the lists' sublists itself (h29-http), on lists
    of many sublists too."""
    slots, request = case

    def outcome(choose: object) -> object:
        try:
            return choose(request, _small_sublists(free_index(slots)), slots)  # type: ignore[operator]
        except (UnknownResource, InsufficientResources) as exc:
            return type(exc).__name__, exc.to_dict()

    assert outcome(choose_node) == outcome(reference_choice)


def test_the_walk_counts_the_entries_of_earlier_sublists() -> None:
    """The resource walked is the one with the fewest entries at or past the
    request, counted over every sublist: cpu (6 nodes have one), where a
    count ignoring cpu's earlier sublists (its ten zeros) would make it 16,
    tie with gpu and walk gpu, landing on b0."""
    slots = {f"a{i}": Slot(Node(f"a{i}", {"cpu": 8, "gpu": 8}), {"cpu": 0, "gpu": 8})
             for i in range(10)}
    slots.update({f"b{i}": Slot(Node(f"b{i}", {"cpu": 8, "gpu": 8}), {"cpu": 8 - i, "gpu": 1 + i})
                  for i in range(6)})
    request = {"gpu": 1, "cpu": 1}
    assert choose_node(request, _small_sublists(free_index(slots)), slots) == "b5"
    assert reference_choice(request, free_index(slots), slots) == "b5"


def test_an_unknown_resource_is_named_as_before() -> None:
    slots = {"a": Slot(Node("a", {"cpu": 4}), {"cpu": 4})}
    with pytest.raises(UnknownResource) as caught:
        choose_node({"tpu": 1, "cpu": 1, "fpga": 1}, free_index(slots), slots)
    assert caught.value.message == "resources.fpga: no node has fpga, tpu"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.sampled_from("abcdefghijklmnopqrstuvwxyz")),
                unique_by=lambda e: e[1], min_size=1, max_size=24),
       st.data())
def test_a_move_leaves_the_list_a_remove_and_an_add_leave(
        entries: list[tuple[int, str]], data: st.DataObject) -> None:
    moved, expected = SortedList(entries), SortedList(entries)
    for index in (moved, expected):
        index._reset(4)  # sublists of four: moves across their edges
    old = data.draw(st.sampled_from(entries))
    new = (data.draw(st.integers(0, 30)), old[1])
    _move(moved, old, new)
    expected.remove(old)
    expected.add(new)
    moved._check()  # SortedList's own consistency check (maxes, positional index)
    assert list(moved) == list(expected)
    assert [moved.bisect_left((q, "")) for q in range(32)] == [
        expected.bisect_left((q, "")) for q in range(32)]


def test_the_ledger_index_matches_the_free_amounts_after_grants_and_releases() -> None:
    ledger = Ledger()
    for i in range(6):
        ledger.add_node(Node(f"n{i}", {"cpu": 100 + i, "memory": 1000}))
    granted = [ledger.grant(f"a{k}", {"cpu": 7, "memory": 30}, now=float(k)) for k in range(40)]
    for alloc in granted[::3]:
        ledger.release(alloc.id, ReleaseReason.RELEASED, 99.0)
    ledger.grant("last", {"cpu": 1}, now=100.0)
    ledger._flush_index()
    assert {r: list(ix) for r, ix in ledger._index.items()} == {
        r: sorted((ledger.free(n)[r], n) for n in ledger.nodes) for r in ("cpu", "memory")}
    assert [a.node for a in granted[:8]] == ["n0", "n0", "n0", "n0", "n0", "n0", "n0", "n0"]
