"""Shortcuts of the walk and of EASY's first instant, each held to the plain
code it replaces (hypothesis): the same placements, state and reservations.

* the walk tests an index entry on the resources it does not walk (the one
  it walks always suffices from the bisect on), and counts the walked one
  only for entries that pass;
* ``FreeIndex.recompute`` takes one max() per column of entries grouped by
  their classes' resource names;
* EASY's one-task reservation builds the free vectors of the nodes freed
  "now" only for those the task fits on.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apportion.core.model import Node
from apportion.core.scheduling import ClusterState, TaskPlacement, job, parse_constraints
from apportion.core.scheduling import framework as fw
from apportion.core.scheduling.backfill import HeadReservation, easy_reservation, running_ends
from apportion.core.scheduling.constraints import NO_CONSTRAINTS
from apportion.core.scheduling.filters import NeedPast, Verdict, class_verdict, need_past
from apportion.core.scheduling.framework import Placer
from apportion.core.scheduling.freeindex import FreeIndex
from apportion.core.scheduling.jobs import TaskSpec
from apportion.core.scheduling.policies import STRATEGIES
from sched_support import replay_steps

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])
NAMES = [("cpu", "memory"), ("cpu", "gpu", "memory"), ("gpu",)]
_NEED_PAST = need_past
ZONE_A = parse_constraints("zone=a")


@st.composite
def fleets(draw: st.DrawFn, most: int = 12) -> list[Node]:
    """Nodes of cpu and memory, some with GPUs, a few of GPUs alone."""
    out = []
    for i in range(draw(st.integers(1, most))):
        kind = draw(st.integers(0, 5))
        resources = ({"gpu": draw(st.sampled_from([2, 4]))} if kind == 0 else
                     {"cpu": draw(st.sampled_from([4, 8, 16])),
                      "memory": draw(st.sampled_from([8, 32, 64]))})
        if kind == 1:
            resources["gpu"] = 4
        out.append(Node(f"n{i:02d}", resources,
                        labels={"zone": draw(st.sampled_from(["a", "b"]))}))
    return out


requests = st.fixed_dictionaries(
    {"cpu": st.integers(1, 8), "memory": st.integers(1, 32)},
    optional={"gpu": st.integers(1, 2)})
steps = st.lists(st.tuples(st.booleans(), requests, st.integers(1, 3), st.integers(0, 50)),
                 min_size=1, max_size=30)


def _plain_split(state: ClusterState, verdict: Verdict, walked: str, spec: TaskSpec
                 ) -> NeedPast:
    # The test before the shortcut: every requested resource, the walked one
    # too (counting it again after the others changes no minimum).
    _, walked_of, rest, _ = _NEED_PAST(state, verdict, walked, spec)
    return dict(verdict.need), walked_of, rest, dict(walked_of)


def _replay(nodes: list[Node], ops: list[tuple[bool, dict[str, int], int, int]],
            name: str) -> tuple[list[object], object]:
    state = ClusterState(nodes)
    seen = replay_steps(state, Placer(state, STRATEGIES[name].options), ops,
                        lambda n, request, count, pick: job(
                            f"j{n}", request, count=count,
                            constraints=ZONE_A if pick % 3 == 0 else NO_CONSTRAINTS))
    books = {n: (r.free, sorted(r.jobs.items())) for n, r in state.nodes.items()}
    return seen, books


@SETTINGS
@given(fleets(), steps, st.sampled_from(["binpack", "fifo", "spread", "cost"]))
def test_the_walk_places_as_when_it_tested_every_requested_resource(
    monkeypatch: pytest.MonkeyPatch, nodes: list[Node],
    ops: list[tuple[bool, dict[str, int], int, int]], name: str,
) -> None:
    fast = _replay(nodes, ops, name)
    with monkeypatch.context() as m:
        m.setattr(fw, "_need_past", _plain_split)
        plain = _replay(nodes, ops, name)
    assert fast == plain


def test_the_walk_splits_a_request_by_the_resource_it_walks() -> None:
    state = ClusterState([Node("c", {"cpu": 8000, "memory": 16}),
                          Node("g", {"cpu": 8000, "gpu": 4, "memory": 32})])
    c, g = state.nodes["c"].cls.id, state.nodes["g"].cls.id
    cpu_job = job("a", {"cpu": 1000, "memory": 2})
    verdict = class_verdict(state, cpu_job, 0)
    others, walked_of, rest, first_of = need_past(state, verdict, "cpu", cpu_job.tasks[0])
    # (cpu, memory) and (cpu, gpu, memory): memory sits at 1 and 2.
    assert others == {c: ((1, 2),), g: ((2, 2),)}
    assert walked_of == {c: (0, 1000), g: (0, 1000)}
    assert rest == (("memory", 2),)
    assert first_of == {c: (1, 2), g: (2, 2)}
    gpu_job = job("b", {"gpu": 2})
    verdict = class_verdict(state, gpu_job, 0)
    # Nothing but the walked resource: the first test is the walked one,
    # which every entry the walk meets passes.
    assert need_past(state, verdict, "gpu", gpu_job.tasks[0]) == ({g: ()}, {g: (1, 2)}, (),
                                                                  {g: (1, 2)})


def _plain_bounds(index: FreeIndex, k: int) -> tuple[dict[str, int], int]:
    bound: dict[str, int] = {}
    mask = 0
    for _, cid, free, _ in index.blocks[k]:
        mask |= 1 << cid
        for r, q in zip(index.names[cid], free, strict=True):
            if q > bound.get(r, -1):
                bound[r] = q
    return bound, mask


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 7), st.lists(st.integers(-2, 64), min_size=3,
                                                      max_size=3)),
                min_size=1, max_size=120),
       st.lists(st.integers(0, 200), max_size=60))
def test_recompute_gives_the_bounds_of_a_pass_over_every_entry(
    adds: list[tuple[int, list[int]]], removes: list[int]
) -> None:
    index = FreeIndex()
    entries = []
    for bid, (cid, amounts) in enumerate(adds):
        names = NAMES[cid % len(NAMES)]
        free = tuple(amounts[:len(names)])
        entry = (free[0], cid, free, bid)
        index.add(entry, names)
        entries.append(entry)
    for i in removes:
        if len(entries) > 1:
            index.remove(entries.pop(i % len(entries)))
    for k in range(len(index.blocks)):
        index.recompute(k)
        assert (index.bounds[k], index.masks[k]) == _plain_bounds(index, k)
        assert not index.stale[k]


def _view(h: HeadReservation | None) -> object:
    if h is None:
        return None
    r = h.reservation
    return (r.job_id, r.start, dict(r.nodes), h.extra)


# Amounts that add up to whole nodes, so that a node freed "now" often has
# just enough for the head.
coarse = st.fixed_dictionaries(
    {"cpu": st.sampled_from([2, 4, 8]), "memory": st.sampled_from([8, 16, 32])},
    optional={"gpu": st.sampled_from([1, 2])})


@SETTINGS
@given(fleets(6), st.lists(st.tuples(coarse, st.integers(0, 11), st.integers(0, 40),
                                     st.sampled_from([5.0, 20.0, 60.0, None])), max_size=40),
       st.fixed_dictionaries({"cpu": st.sampled_from([8, 16]),
                              "memory": st.sampled_from([16, 32, 64])},
                             optional={"gpu": st.sampled_from([1, 2])}),
       st.sampled_from([0.0, 10.0, 30.0, 50.0, 80.0]))
def test_the_one_task_reservation_is_the_general_methods(
    nodes: list[Node], running: list[tuple[dict[str, int], int, int, float | None]],
    head: dict[str, int], now: float,
) -> None:
    # Jobs past their estimate (ending "now") and jobs ending later, on a
    # mixed fleet; the head waits for some of them to end.
    state = ClusterState(nodes)
    names = sorted(state.nodes)
    for n, (request, where, start, est) in enumerate(running):
        node = names[where % len(names)]
        rec = state.nodes[node]
        aligned = state.align(rec.cls, request)
        if aligned is None or any(f < q for f, q in zip(rec.free, aligned, strict=True)):
            continue
        state.start(job(f"r{n}", request, runtime_estimate=est),
                    [TaskPlacement(node, request)], float(start), est)
    placer = Placer(state, STRATEGIES["fifo"].options)
    j = job("head", head)
    quick = _view(easy_reservation(state, placer, j, now))
    assert quick == _view(easy_reservation(state, placer, j, now,
                                           ends=running_ends(state, now)))
