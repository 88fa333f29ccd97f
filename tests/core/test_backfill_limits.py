"""``backfill.limits_in_play``: a job placed past EASY's head without the
head's limits where they cannot change the placement (so it takes the
one-task path, ``Placer._place_one``) lands where the limited placement
lands, refusals included, and leaves the same state (hypothesis, every
placing strategy, on mixed fleets and on fleets of one resource: cpu-only,
GPU-only, GPU share slots, with now and then a class of a zero or 2**50
capacity, and jobs with required rules about the jobs on a node); and
literal cases of when the limits stay and when they go."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings, target
from hypothesis import strategies as st

from apportion.core.gpu_shares import split_gpu
from apportion.core.model import Device, Node, NodeState
from apportion.core.scheduling import ClusterState, Job, TaskSpec
from apportion.core.scheduling.backfill import limits_in_play
from apportion.core.scheduling.constraints import NO_CONSTRAINTS, parse_constraints
from apportion.core.scheduling.filters import class_verdict
from apportion.core.scheduling.framework import Placer
from apportion.core.scheduling.interface import Candidate
from apportion.core.scheduling.jobs import Affinity, RunningJob
from apportion.core.scheduling.policies import STRATEGIES
from apportion.core.scheduling.walkstart import limits_by_bucket
from sched_support import books, end_one, hold, mixed_fleets

SETTINGS = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

RESOURCES = ("cpu", "memory", "gpu", "gpu.shares")
CONSTRAINTS = [NO_CONSTRAINTS, NO_CONSTRAINTS, parse_constraints("zone=a"),
               parse_constraints("gpu.model=H100")]
NEAR_WEB = (Affinity(parse_constraints("name=web").labels, target="job", required=True),)
RULES: list[tuple[tuple[Affinity, ...], tuple[Affinity, ...]]] = [
    ((), ()), ((), ()), ((), ()), (NEAR_WEB, ()), ((), NEAR_WEB)]
"""(affinity, anti-affinity): most jobs have none; the others a required
rule about the jobs on a node, which tells a bucket's nodes apart."""
SHAPES = [("own",), ("own",), ("own",), ("cpu",), ("gpu",), ("gpu.shares",),
          ("cpu", "memory"), ("cpu", "memory", "gpu"), ("cpu", "gpu.shares")]
"""The resources a job asks for: most often the first node's first one
alone (``own``: a lone verdict on a fleet of one resource)."""
AMOUNTS = [-1000, 0, 500, 1000, 3000, 10**6]
"""Limits per resource: overdrawn, none left, some, more than any node has."""
INEXACT = [{"cpu": 2**50}, {"cpu": 2000, "memory": 2**51}, {"memory": 8, "gpu": 0}]
"""Classes past what the compiled ``pick`` scores: jobs they may take walk in
Python. The zero one can take no job drawn here (``Fitness`` divides by a
capacity, so a zero one it ranks fails on either path)."""

what = st.tuples(st.sampled_from(range(len(SHAPES))),
                 st.tuples(st.sampled_from([500, 1000, 2000, 4000, 9000]),
                           st.sampled_from([1, 2, 8]), st.sampled_from([1, 2, 5]),
                           st.sampled_from([1, 2, 3, 5])),
                 st.integers(0, len(CONSTRAINTS) - 1), st.sampled_from([1, 1, 1, 2]),
                 st.integers(0, len(RULES) - 1), st.sampled_from(["web", "db"]))
limits = st.lists(st.tuples(st.sampled_from([0, 0, 0, 1, 2, 5, 40]),
                            st.tuples(*[st.sampled_from(AMOUNTS)] * 4)),
                  min_size=1, max_size=3)
"""Limited nodes, by rank from the fullest (as the head's reservation
mostly holds full nodes), and their limits."""
steps = st.lists(st.tuples(st.sampled_from([True, True, True, False]), what, limits,
                           st.integers(0, 40)),
                 min_size=8, max_size=40)


def _one_resource(i: int, kind: str, size: int, zone: str, model: str) -> Node:
    name, labels = f"n{i:02d}", {"zone": zone, "gpu.model": model}
    if kind == "cpu":
        return Node(name, {"cpu": size * 1000}, labels={"zone": zone})
    gpus = tuple(Device(f"GPU-{k}", model) for k in range(size))
    if kind == "gpu":
        return Node(name, {"gpu": size}, devices={"gpu": gpus}, labels=labels)
    slots = tuple(s for d in gpus for s in split_gpu(d, 2))
    return Node(name, {"gpu.shares": len(slots)}, devices={"gpu.shares": slots}, labels=labels)


@st.composite
def fleets(draw: st.DrawFn) -> list[Node]:
    """Mixed fleets, or fleets of one resource whose nodes mostly copy the
    first (one class: a lone verdict); now and then a node of an inexact
    class; a few nodes not ready."""
    kind = draw(st.sampled_from(["mixed", "cpu", "cpu", "gpu", "gpu", "shares"]))
    if kind == "mixed":
        out = draw(mixed_fleets())
    else:
        out, first = [], None
        for i in range(draw(st.integers(1, 12))):
            if first is None or not draw(st.integers(0, 7)):
                first = (draw(st.sampled_from([2, 4, 8])), draw(st.sampled_from(["a", "b"])),
                         draw(st.sampled_from(["A100", "H100"])))
            ready = NodeState.READY if draw(st.integers(0, 9)) else NodeState.DRAINING
            node = _one_resource(i, kind, *first)
            out.append(Node(node.name, node.resources, devices=node.devices,
                            labels=node.labels, state=ready))
    if not draw(st.integers(0, 4)):
        out.append(Node("x", draw(st.sampled_from(INEXACT)), labels={"zone": "a"}))
    return out


def _job(n: int, what: Any, own: str) -> Job:
    shape, amounts, c, count, rules, name = what
    have = dict(zip(RESOURCES, amounts, strict=True))
    affinity, anti = RULES[rules]
    asked = [own if r == "own" else r for r in SHAPES[shape]]
    return Job(f"j{n}", (TaskSpec({r: have[r] for r in asked}, count),),
               constraints=CONSTRAINTS[c], affinity=affinity, anti_affinity=anti, name=name)


def _share_free(state: ClusterState, name: str) -> float:
    rec = state.nodes[name]
    return sum(f / c for f, c in zip(rec.free, rec.cls.capacity, strict=True) if c)


def _extra(state: ClusterState, drawn: list[tuple[int, tuple[int, ...]]]
           ) -> dict[str, dict[str, int]]:
    names = sorted(state.nodes, key=lambda n: (_share_free(state, n), n))
    out: dict[str, dict[str, int]] = {}
    for i, amounts in drawn:
        caps = dict(zip(RESOURCES, amounts, strict=True))
        name = names[i % len(names)]
        out[name] = {r: caps.get(r, 0) for r in state.nodes[name].node.resources}
    return out


class _Walks(Placer):
    """The limited placement, keeping how many candidates its walks gave."""

    def __init__(self, state: ClusterState, options: Any) -> None:
        super().__init__(state, options)
        self.walked: list[int] = []

    def _walk(self, *args: Any) -> list[Candidate]:
        cands = super()._walk(*args)
        self.walked.append(len(cands))
        return cands


def _early_stop(placer: _Walks, j: Job, extra: dict[str, dict[str, int]]) -> bool:
    """Whether the one-task path stops at its first candidate where the
    limited walk, its limited nodes in buckets, ranked two or more."""
    state = placer.state
    verdict = class_verdict(state, j, 0)
    return (limits_in_play(state, j, extra) is None and bool(limits_by_bucket(state, extra))
            and placer.options.first_is_best and verdict.lone
            and not placer._per_node(j, verdict, placer._scorers(j))
            and max(placer.walked, default=0) >= 2)


fills = st.lists(st.sampled_from([0, 500, 1000, 2000, 3000, 6000]), max_size=12)
"""The cpu the nodes, in name order, start with in use: buckets of several
free amounts from the first step."""


def _run(nodes: list[Node], fill: list[int], ops: list[tuple[bool, Any, Any, int]],
         strategy: str, fast: bool) -> tuple[list[object], object, int]:
    state = ClusterState(nodes)
    for k, (name, cpu) in enumerate(zip(sorted(state.nodes), fill, strict=False)):
        if cpu and state.free(name).get("cpu", 0) >= cpu:
            hold(state, f"f{k}", [name], 0.0, 10.0, cpu)
    placer = _Walks(state, STRATEGIES[strategy].options)
    own = next(iter(nodes[0].resources))
    seen: list[object] = []
    stops = 0
    for n, (place, what, drawn, pick) in enumerate(ops):
        if not place and state.running:
            seen.append(end_one(state, pick))
            continue
        j = _job(n, what, own)
        extra = _extra(state, drawn)
        placer.walked = []
        result = placer.place(j, limits=limits_in_play(state, j, extra) if fast else extra)
        stops += not fast and result.tasks is not None and _early_stop(placer, j, extra)
        if result.tasks is not None:
            state.add_running(RunningJob(j, float(n), result.tasks, 10.0))
        seen.append((j.id, result.tasks, result.failure))
    return seen, books(state), stops


@SETTINGS
@given(fleets(), fills, steps, st.sampled_from(["fifo", "binpack", "cost", "affinity", "spread"]))
def test_the_same_results_and_state_as_the_limited_placement(
    nodes: list[Node], fill: list[int], ops: list[tuple[bool, Any, Any, int]], strategy: str
) -> None:
    fast = _run(nodes, fill, ops, strategy, True)
    limited = _run(nodes, fill, ops, strategy, False)
    assert fast[:2] == limited[:2]
    target(float(limited[2]), label="early stops")


ONE_CPU_TASK = (0, (0, 1, 1, 1), 0, 1, 0, "db")
"""A job asking for cpu alone (the amount put in its place), no rules."""


def test_the_one_task_path_stops_at_its_first_where_the_limited_walk_ranks_several() -> None:
    # The case the argument rests on, on fleets of one class of cpu alone
    # (a lone verdict) under the first_is_best strategies, the limited
    # nodes mostly the fullest: the one-task path stops at its first
    # candidate where the limited walk ranked two or more, and lands the same.
    stops: list[int] = []

    @SETTINGS
    @given(st.lists(st.sampled_from([0, 1000, 2000, 4000, 6000, 7000, 7500, 8000]),
                    min_size=2, max_size=10),
           st.sampled_from([500, 1000, 2000, 3000, 4000]), limits,
           st.sampled_from(["fifo", "binpack", "cost", "affinity"]))
    def check(fill: list[int], cpu: int, drawn: Any, strategy: str) -> None:
        nodes = [Node(f"n{i:02d}", {"cpu": 8000}) for i in range(len(fill))]
        shape, amounts, *rest = ONE_CPU_TASK
        ops = [(True, (shape, (cpu, *amounts[1:]), *rest), drawn, 0)]
        fast = _run(nodes, fill, ops, strategy, True)
        limited = _run(nodes, fill, ops, strategy, False)
        assert fast[:2] == limited[:2]
        stops.append(limited[2])

    check()
    assert stops and sum(stops) >= len(stops) // 10, stops


def _lands(nodes: list[Node], j: Job, extra: dict[str, dict[str, int]] | None,
           held: tuple[tuple[str, int], ...] = ()) -> tuple[list[str], int]:
    """Where ``j`` lands under fifo with ``extra`` as its limits, after jobs
    of ``(node, cpu)`` took theirs, and the most candidates a walk gave."""
    state = ClusterState(nodes)
    for k, (name, cpu) in enumerate(held):
        hold(state, f"h{k}", [name], 0.0, 10.0, cpu)
    placer = _Walks(state, STRATEGIES["fifo"].options)
    result = placer.place(j, limits=extra)
    assert result.tasks is not None
    return [tp.node for tp in result.tasks], max(placer.walked, default=0)


def _state() -> tuple[ClusterState, Placer]:
    state = ClusterState(NODES)
    return state, Placer(state, STRATEGIES["fifo"].options)


NODES = [Node("a", {"cpu": 8000, "memory": 16}), Node("b", {"cpu": 2000, "memory": 16}),
         Node("c", {"cpu": 8000, "memory": 16}, state=NodeState.DRAINING)]


def test_limits_on_a_node_short_of_the_task_or_down_are_dropped() -> None:
    state, _ = _state()
    j = Job("j", (TaskSpec({"cpu": 4000}),))
    extra = {"b": {"cpu": 0, "memory": 0}, "c": {"cpu": 0, "memory": 0},
             "gone": {"cpu": 0}}
    assert limits_in_play(state, j, extra) is None
    assert _lands(NODES, j, extra)[0] == _lands(NODES, j, None)[0] == ["a"]


def test_limits_on_a_node_whose_class_cannot_take_the_task_are_dropped() -> None:
    # b would be the tightest fit, and its limit would refuse the task; but
    # the job asks for zone a, so the walk never meets b.
    nodes = [Node("a", {"cpu": 8000}, labels={"zone": "a"}),
             Node("b", {"cpu": 4000}, labels={"zone": "b"})]
    j = Job("j", (TaskSpec({"cpu": 2000}),), constraints=parse_constraints("zone=a"))
    extra = {"b": {"cpu": 0}}
    assert limits_in_play(ClusterState(nodes), j, extra) is None
    assert _lands(nodes, j, extra)[0] == _lands(nodes, j, None)[0] == ["a"]


def test_the_one_task_path_stops_at_the_first_where_the_limited_walk_ranks_three() -> None:
    # One class of cpu alone (a lone verdict) under fifo (first_is_best):
    # free a 1000 (limited, short of the task), b 3000, c 5000, d 8000.
    nodes = [Node(n, {"cpu": 8000}) for n in "abcd"]
    held = (("a", 7000), ("b", 5000), ("c", 3000))
    j = Job("j", (TaskSpec({"cpu": 2000}),))
    extra = {"a": {"cpu": 0}}
    state = ClusterState(nodes)
    for k, (name, cpu) in enumerate(held):
        hold(state, f"h{k}", [name], 0.0, 10.0, cpu)
    assert limits_in_play(state, j, extra) is None
    assert class_verdict(state, j, 0).lone and STRATEGIES["fifo"].options.first_is_best
    assert _lands(nodes, j, extra, held) == (["b"], 3)  # ranked b, c and d
    assert _lands(nodes, j, None, held) == (["b"], 0)  # take_lone: no walk


def test_limits_on_a_node_that_holds_the_task_stay() -> None:
    state, _ = _state()
    j = Job("j", (TaskSpec({"cpu": 1000}),))
    extra = {"b": {"cpu": 0, "memory": 0}}
    assert limits_in_play(state, j, extra) is extra


def test_limits_of_a_job_of_several_tasks_stay() -> None:
    state, _ = _state()
    j = Job("j", (TaskSpec({"cpu": 4000}, 2),))
    extra = {"b": {"cpu": 0, "memory": 0}}
    assert limits_in_play(state, j, extra) is extra
