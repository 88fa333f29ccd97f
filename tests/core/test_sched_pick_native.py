"""The compiled one-task walk and ranking (``_freeindex_c.pick``, which
``Placer._place_one`` calls through ``fastindex.pick``) and the compiled
move of a node's free vector (``_freeindex_c.move_free``, every grant and
release) held to the Python they stand for (``Placer._walk`` and ``_best``,
``FreeCapacity._move_py``), with hypothesis: the same placements and
refusals, the same state and the same free index (bounds, counts, masks,
stale marks) after every step, on fleets of cpu, memory and GPU nodes large
enough for walks over several index blocks, for every placing strategy and
for weights and limits the strategies do not use (negative weights, a limit
of one, amounts past what a C double holds exactly, which the C code hands
back to Python).

Skipped, as the compiled index's own tests are, where the extension is not
built or ``APPORTION_NO_NATIVE=1`` hides it (``tests/conftest.py``).
"""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apportion.core.model import Device, Node, NodeState
from apportion.core.scheduling import ClusterState, Job, TaskSpec, fastindex, framework
from apportion.core.scheduling.capacity import FreeCapacity
from apportion.core.scheduling.constraints import NO_CONSTRAINTS, parse_constraints
from apportion.core.scheduling.framework import Placer
from apportion.core.scheduling.interface import PlaceOptions
from apportion.core.scheduling.policies import STRATEGIES
from apportion.core.scheduling.scorers import NATIVE_CODES, SCORERS
from sched_support import books, mixed_fleets, replay_steps

if fastindex.pick is None:
    if os.environ.get("CI") == "true" and os.environ.get("APPORTION_NO_NATIVE") != "1":
        raise ImportError("the compiled free index was not built")  # CI tests what ships
    pytest.skip("the compiled free index (core/scheduling/_freeindex_c.pyx) is not in use",
                allow_module_level=True)

# Built and in use (checked above): importing it sooner fails where it is hidden.
from apportion.core.scheduling._freeindex_c import score

SETTINGS = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

BIG = 2**51
"""A memory amount past what ``pick`` scores in C (2**50): it hands back."""


def fleets() -> st.SearchStrategy[list[Node]]:
    """Fleets of up to 60 nodes (walks over several index blocks), a
    quarter of them with a memory amount past exact doubles."""
    plain = (4, 8, 12, 16, 32)
    return st.sampled_from([plain, plain, plain, (*plain[:4], BIG)]).flatmap(
        lambda memories: mixed_fleets(60, (1000, 2000, 3000, 4000, 8000), memories,
                                      (0, 0, 0, 2, 4)))


def random_fleets() -> st.SearchStrategy[list[Node]]:
    """Fleets whose amounts are any integers (of a few sizes each, so some
    buckets share them): shares that no round figure gives."""
    sizes = st.lists(st.integers(1, 2**40), min_size=1, max_size=5).map(tuple)
    return st.tuples(sizes, st.lists(st.integers(1, 64), min_size=1, max_size=5).map(tuple)
                     ).flatmap(lambda t: mixed_fleets(60, t[0], t[1], (0, 0, 0, 2, 4)))


CONSTRAINTS = [NO_CONSTRAINTS, NO_CONSTRAINTS, parse_constraints("zone=a"),
               parse_constraints("gpu.model=H100")]

what = st.tuples(st.sampled_from([0, 500, 1000, 1500, 2000, 4000]), st.sampled_from([0, 1, 2, 3]),
                 st.sampled_from([0, 0, 0, 1, 2]), st.integers(0, len(CONSTRAINTS) - 1))
steps = st.lists(st.tuples(st.integers(0, 3).map(bool), what, st.just(1), st.integers(0, 80)),
                 min_size=1, max_size=80)
any_what = st.tuples(st.integers(0, 2**38), st.integers(0, 16), st.sampled_from([0, 0, 0, 1, 2]),
                     st.integers(0, len(CONSTRAINTS) - 1))
any_steps = st.lists(st.tuples(st.integers(0, 3).map(bool), any_what, st.just(1),
                               st.integers(0, 80)), min_size=1, max_size=80)
weights = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
any_options = st.builds(
    PlaceOptions,
    st.lists(st.tuples(st.sampled_from([SCORERS[n] for n in
                                        ("binpack", "spread", "fitness", "balanced")]),
                       weights), max_size=4).map(tuple),
    st.booleans(), st.integers(1, 8))
"""Options of any C-scored plugins with any finite weights, negative ones
included, and any limit."""

OWN = {  # options no strategy has: every C-scored plugin, odd weights and limits
    "all-four": PlaceOptions((
        (SCORERS["binpack"], 0.7), (SCORERS["spread"], 0.3), (SCORERS["fitness"], 1.1),
        (SCORERS["balanced"], 0.9)), limit=6),
    "negative": PlaceOptions(((SCORERS["binpack"], -1.0), (SCORERS["fitness"], 2)), limit=3),
    "one": PlaceOptions(((SCORERS["balanced"], 1.0),), limit=1),
    "none": PlaceOptions((), limit=5),
    "loose": PlaceOptions(((SCORERS["fitness"], 1.0), (SCORERS["balanced"], 0.5)),
                          loose=True, limit=4),
}
OPTIONS = {**{name: s.options for name, s in STRATEGIES.items()}, **OWN}


def _job(n: int, what: tuple[int, int, int, int], count: int, pick: int) -> Job:
    cpu, memory, gpus, c = what
    request = {r: q for r, q in (("cpu", cpu), ("memory", memory), ("gpu", gpus)) if q}
    return Job(f"j{n}", (TaskSpec(request or {"cpu": 1}, count),), constraints=CONSTRAINTS[c])


def _index(state: ClusterState) -> object:
    out = {}
    for r in ("cpu", "memory", "gpu"):
        ix = state.index(r)
        if ix is not None:
            out[r] = (ix.blocks, ix.lasts, ix.lens, ix.bounds, ix.tops, ix.masks, ix.stale)
    return out


def _run(nodes: list[Node], ops: list[tuple[bool, Any, int, int]], options: PlaceOptions
         ) -> tuple[list[object], object, object]:
    state = ClusterState(nodes)
    seen = replay_steps(state, Placer(state, options), ops, _job)
    return seen, books(state), _index(state)


@SETTINGS
@given(fleets(), steps, st.sampled_from(sorted(OPTIONS)))
def test_the_same_results_state_and_index_as_the_python_walk(
    nodes: list[Node], ops: list[tuple[bool, Any, int, int]], name: str
) -> None:
    native = _run(nodes, ops, OPTIONS[name])
    with (mock.patch.object(framework, "pick", None),
          mock.patch.object(FreeCapacity, "_move", FreeCapacity._move_py)):
        assert _run(nodes, ops, OPTIONS[name]) == native


def test_the_fullest_fitting_bucket_and_a_hand_back_past_exact_doubles() -> None:
    nodes = [Node("a", {"cpu": 8000, "memory": 16}), Node("b", {"cpu": 4000, "memory": 16}),
             Node("c", {"cpu": 4000, "memory": 2}), Node("d", {"cpu": 6000, "memory": BIG})]
    state = ClusterState(nodes)
    placer = Placer(state, STRATEGIES["fifo"].options)
    verdict_of = framework.class_verdict
    spec = TaskSpec({"cpu": 3000, "memory": 4})
    job = Job("j", (spec,))
    scorers = placer._scorers(job)
    # "d" is a candidate whose memory a double cannot score exactly.
    assert placer._pick(spec, verdict_of(state, job, 0), scorers) is False
    state.update_node(Node("d", {"cpu": 6000, "memory": 64}))
    picked = placer._pick(spec, verdict_of(state, job, 0), scorers)
    assert picked is not False and picked is not None
    rec, aligned = picked
    assert (rec.name, aligned) == ("b", (3000, 4))
    big = Job("k", (TaskSpec({"cpu": 9000}),))
    assert placer._pick(big.tasks[0], verdict_of(state, big, 0), placer._scorers(big)) is None


@SETTINGS
@given(random_fleets(), any_steps, any_options)
def test_the_same_with_any_amounts_and_weights(
    nodes: list[Node], ops: list[tuple[bool, Any, int, int]], options: PlaceOptions
) -> None:
    native = _run(nodes, ops, options)
    with (mock.patch.object(framework, "pick", None),
          mock.patch.object(FreeCapacity, "_move", FreeCapacity._move_py)):
        assert _run(nodes, ops, options) == native


EXACT = 2**50
amounts = st.integers(0, EXACT - 1)


@settings(max_examples=2000, deadline=None)
@given(st.sampled_from(sorted(NATIVE_CODES, key=NATIVE_CODES.__getitem__)),
       st.lists(st.tuples(st.integers(1, EXACT - 1), amounts, amounts), min_size=1, max_size=3))
def test_the_c_score_is_the_plugins_float_for_float(plugin: type, rows: list[tuple[int, ...]]
                                                    ) -> None:
    # Exact equality: a division rewritten as a product by the inverse, or
    # sums in another order, round differently somewhere in this range.
    cap, free, aligned = (tuple(col) for col in zip(*rows, strict=True))
    cand = SimpleNamespace(cls=SimpleNamespace(capacity=cap), free=free, aligned=aligned)
    want = plugin().score(cand, None)
    assert score(NATIVE_CODES[plugin], cap, free, aligned) == want


def test_the_c_score_hands_back_what_a_double_cannot_hold() -> None:
    assert score(1, (EXACT,), (0,), (1,)) is None
    assert score(3, (4, 0), (1, 0), (1, 0)) is None
    assert score(4, (4, 8), (1, 8), (1, 2)) == 1.0 - (1.0 - 0.25)


def test_a_limit_past_a_c_size_ranks_every_entry() -> None:
    nodes = [Node("a", {"cpu": 8000}), Node("b", {"cpu": 4000})]
    state = ClusterState(nodes)
    placer = Placer(state, PlaceOptions(((SCORERS["spread"], 1.0),), limit=10**20))
    job = Job("j", (TaskSpec({"cpu": 1000}),))
    picked = placer._pick(job.tasks[0], framework.class_verdict(state, job, 0),
                          placer._scorers(job))
    assert picked is not False and picked is not None
    assert picked[0].name == "a"


def test_no_compiled_walk_left_behind_where_a_class_is_past_exact_doubles() -> None:
    # Hypothesis's find: ``pick`` walked (tightening the gpu index's bounds),
    # met the memory of 2**51 and handed back; the Python walk then found
    # those bounds tight already, and the index's tops and stale marks
    # differed from the Python path's. Such a fleet now walks in Python.
    gpus = tuple(Device(f"GPU-{k}", "V100" if k == 0 else "A100") for k in range(4))
    nodes = [Node("n00", {"cpu": 1000, "memory": BIG, "gpu": 2}, devices={"gpu": gpus[:2]}),
             *(Node(f"n0{i}", {"cpu": 1000, "memory": 4}, state=NodeState.DRAINING)
               for i in (1, 2)),
             Node("n03", {"cpu": 1000, "memory": 4}),
             Node("n04", {"cpu": 2000, "memory": 4, "gpu": 4}, devices={"gpu": gpus})]
    none, gpu = (False, (0, 0, 0, 0), 1, 0), (False, (0, 1, 1, 0), 1, 0)
    ops: list[tuple[bool, Any, int, int]] = [
        *[none] * 6, gpu, *[none] * 3, (False, (1500, 0, 0, 0), 1, 0), *[none] * 3, gpu]
    native = _run(nodes, ops, STRATEGIES["fifo"].options)
    assert ClusterState(nodes).inexact
    with (mock.patch.object(framework, "pick", None),
          mock.patch.object(FreeCapacity, "_move", FreeCapacity._move_py)):
        assert _run(nodes, ops, STRATEGIES["fifo"].options) == native


def test_a_class_past_exact_doubles_sends_only_the_jobs_it_may_hold_to_python() -> None:
    # A node declaring gpu=0 (a zero capacity: no exact score) must not
    # take the compiled walk from jobs only the other classes can hold.
    nodes = [Node("zero", {"cpu": 4, "gpu": 0}), Node("big", {"cpu": 64, "memory": 8})]
    state = ClusterState(nodes)
    assert state.inexact == state.nodes["zero"].cls.bit
    placer = Placer(state, STRATEGIES["binpack"].options)
    calls: list[object] = []

    def counted(*args: Any) -> Any:
        calls.append(args)
        return fastindex.pick(*args)

    with mock.patch.object(framework, "pick", counted):
        needs_memory = placer.place(Job("m", (TaskSpec({"cpu": 8, "memory": 1}),)))
        assert [t.node for t in needs_memory.tasks or ()] == ["big"]
        assert len(calls) == 1
        either = placer.place(Job("c", (TaskSpec({"cpu": 2}),)))
        assert [t.node for t in either.tasks or ()] == ["zero"]
        assert len(calls) == 1  # "zero" may hold it: walked in Python


def _granted_in_transaction() -> tuple[list[Any], Any, Any, int]:
    nodes = [Node("a", {"cpu": 8000, "memory": 16}), Node("b", {"cpu": 4000, "memory": 16}),
             Node("g", {"cpu": 8000, "memory": 16, "gpu": 2},
                  devices={"gpu": tuple(Device(f"GPU-{k}", "A100") for k in range(2))})]
    state = ClusterState(nodes)
    placer = Placer(state, STRATEGIES["binpack"].options)
    mark = state.mark()
    grants = mock.patch.object(ClusterState, "grant", autospec=True, side_effect=ClusterState.grant)
    with grants as grant:
        placed = [placer.place(Job(f"j{n}", (TaskSpec(r),))).tasks for n, r in enumerate(
            [{"cpu": 3000, "memory": 4}, {"cpu": 1000, "gpu": 1}, {"cpu": 3000, "memory": 4}])]
    inside = books(state)
    state.rollback(mark)
    return placed, inside, books(state), grant.call_count


def test_the_compiled_grant_is_logged_and_rolled_back_as_the_python_one() -> None:
    # ``pick`` grants itself where the node's class has none of the task's
    # resources as devices (its log entry: ``ClusterState.grant``'s); a GPU
    # task is handed back for ``_grant_one``'s devices; a cpu task on the GPU
    # node is granted in C.
    *native, native_grants = _granted_in_transaction()
    placed, inside, after = native
    assert [[t.node for t in ts or ()] for ts in placed] == [["b"], ["g"], ["g"]]
    assert inside[0]["b"][2] == {"j0": 1}
    assert all(not jobs for _, _, jobs, _ in after[0].values())
    # Only the GPU task's grant is Python's: a ``pick`` that stopped granting
    # (or one never asked) would show 3, as the Python walk does.
    assert native_grants == 1
    with (mock.patch.object(framework, "pick", None),
          mock.patch.object(FreeCapacity, "_move", FreeCapacity._move_py)):
        *python, python_grants = _granted_in_transaction()
    assert python == native
    assert python_grants == 3
