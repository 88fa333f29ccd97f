"""``backfill.limits_in_play``: a job placed past EASY's head without the
head's limits where they cannot change the placement (so it takes the
one-task path, ``Placer._place_one``) lands where the limited placement
lands, refusals included, and leaves the same state (hypothesis, on mixed
fleets, every placing strategy); and literal cases of when the limits stay."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apportion.core.model import Node, NodeState
from apportion.core.scheduling import ClusterState, Job, TaskSpec
from apportion.core.scheduling.backfill import limits_in_play
from apportion.core.scheduling.constraints import NO_CONSTRAINTS, parse_constraints
from apportion.core.scheduling.framework import Placer
from apportion.core.scheduling.jobs import RunningJob
from apportion.core.scheduling.policies import STRATEGIES
from sched_support import books, mixed_fleets

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

CONSTRAINTS = [NO_CONSTRAINTS, NO_CONSTRAINTS, parse_constraints("zone=a"),
               parse_constraints("gpu.model=H100")]
AMOUNTS = [-1000, 0, 500, 1000, 3000, 10**6]
"""Limits per resource: overdrawn, none left, some, more than any node has."""

what = st.tuples(st.sampled_from([0, 500, 1000, 2000, 4000, 9000]), st.sampled_from([0, 1, 2, 8]),
                 st.sampled_from([0, 0, 1, 2, 5]), st.integers(0, len(CONSTRAINTS) - 1),
                 st.sampled_from([1, 1, 1, 2]))
limits = st.lists(st.tuples(st.integers(0, 40), st.sampled_from(AMOUNTS),
                            st.sampled_from(AMOUNTS), st.sampled_from(AMOUNTS)),
                  min_size=1, max_size=3)
steps = st.lists(st.tuples(st.booleans(), what, limits, st.integers(0, 40)),
                 min_size=1, max_size=40)


def _job(n: int, what: tuple[int, int, int, int, int]) -> Job:
    cpu, memory, gpus, c, count = what
    request = {r: q for r, q in (("cpu", cpu), ("memory", memory), ("gpu", gpus)) if q}
    return Job(f"j{n}", (TaskSpec(request or {"cpu": 1}, count),), constraints=CONSTRAINTS[c])


def _extra(state: ClusterState, drawn: list[tuple[int, int, int, int]]
           ) -> dict[str, dict[str, int]]:
    names = sorted(state.nodes)
    out: dict[str, dict[str, int]] = {}
    for i, cpu, memory, gpu in drawn:
        caps = {"cpu": cpu, "memory": memory, "gpu": gpu}
        name = names[i % len(names)]
        out[name] = {r: caps[r] for r in state.nodes[name].node.resources}
    return out


def _run(nodes: list[Node], ops: list[tuple[bool, Any, Any, int]], strategy: str,
         fast: bool) -> tuple[list[object], object]:
    state = ClusterState(nodes)
    placer = Placer(state, STRATEGIES[strategy].options)
    seen: list[object] = []
    for n, (place, what, drawn, pick) in enumerate(ops):
        if not place and state.running:
            victim = sorted(state.running)[pick % len(state.running)]
            state.finish(victim)
            seen.append(("end", victim))
            continue
        j = _job(n, what)
        extra = _extra(state, drawn)
        used = limits_in_play(state, placer, j, extra) if fast else extra
        result = placer.place(j, limits=used)
        if result.tasks is not None:
            state.add_running(RunningJob(j, float(n), result.tasks, 10.0))
        seen.append((j.id, result.tasks, result.failure))
    return seen, books(state)


@SETTINGS
@given(mixed_fleets(), steps, st.sampled_from(["fifo", "binpack", "cost", "affinity", "spread"]))
def test_the_same_results_and_state_as_the_limited_placement(
    nodes: list[Node], ops: list[tuple[bool, Any, Any, int]], strategy: str
) -> None:
    assert _run(nodes, ops, strategy, True) == _run(nodes, ops, strategy, False)


def _state() -> tuple[ClusterState, Placer]:
    state = ClusterState([Node("a", {"cpu": 8000, "memory": 16}),
                          Node("b", {"cpu": 2000, "memory": 16}),
                          Node("c", {"cpu": 8000, "memory": 16}, state=NodeState.DRAINING)])
    return state, Placer(state, STRATEGIES["fifo"].options)


def test_limits_on_a_node_short_of_the_task_are_dropped() -> None:
    state, placer = _state()
    j = Job("j", (TaskSpec({"cpu": 4000}),))
    extra = {"b": {"cpu": 0, "memory": 0}, "c": {"cpu": 0, "memory": 0},
             "gone": {"cpu": 0}}
    assert limits_in_play(state, placer, j, extra) is None
    result = placer.place(j)
    assert result.tasks is not None and [tp.node for tp in result.tasks] == ["a"]


def test_limits_on_a_node_that_holds_the_task_stay() -> None:
    state, placer = _state()
    j = Job("j", (TaskSpec({"cpu": 1000}),))
    extra = {"b": {"cpu": 0, "memory": 0}}
    assert limits_in_play(state, placer, j, extra) is extra


def test_limits_of_a_job_of_several_tasks_stay() -> None:
    state, placer = _state()
    j = Job("j", (TaskSpec({"cpu": 4000}, 2),))
    extra = {"b": {"cpu": 0, "memory": 0}}
    assert limits_in_play(state, placer, j, extra) is extra
