"""``Placer._place_one`` (a job of one task, no limits, no preferred nodes)
held to the general path (hypothesis): the same results, refusals included,
and the same state after every step, on mixed fleets of cpu, memory and GPU
nodes with labels, device models and nodes that are not ready, for every
placing strategy."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apportion.core.model import Node
from apportion.core.reasons import Failure, Kind
from apportion.core.scheduling import ClusterState, Job, TaskSpec
from apportion.core.scheduling.constraints import NO_CONSTRAINTS, parse_constraints
from apportion.core.scheduling.framework import Placer
from apportion.core.scheduling.policies import STRATEGIES
from apportion.core.scheduling.status import PlaceResult
from sched_support import books, mixed_fleets, replay_steps

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

GENERAL = ("no-such-node",)
"""A preferred node that is not there: ``place`` takes the general path,
whose preference stage skips it."""


CONSTRAINTS = [NO_CONSTRAINTS, NO_CONSTRAINTS, parse_constraints("zone=a"),
               parse_constraints("gpu.model=H100")]

what = st.tuples(st.sampled_from([0, 500, 1000, 2000, 4000, 9000]), st.sampled_from([0, 1, 2, 8]),
                st.sampled_from([0, 0, 1, 2, 5]), st.integers(0, len(CONSTRAINTS) - 1))
steps = st.lists(st.tuples(st.booleans(), what, st.just(1), st.integers(0, 40)),
                 min_size=1, max_size=40)


class _General(Placer):
    def place(self, job: Job, **kw: Any) -> PlaceResult:
        return super().place(job, prefer=GENERAL)


class _Attempted(Placer):
    """``place`` through ``attempt``, the cycle's call."""

    def place(self, job: Job, **kw: Any) -> PlaceResult:
        out = self.attempt(job)
        return PlaceResult(None, out) if isinstance(out, Failure) else PlaceResult(out)


def _job(n: int, what: tuple[int, int, int, int], count: int, pick: int) -> Job:
    cpu, memory, gpus, c = what
    request = {r: q for r, q in (("cpu", cpu), ("memory", memory), ("gpu", gpus)) if q}
    return Job(f"j{n}", (TaskSpec(request or {"cpu": 1}, count),), constraints=CONSTRAINTS[c])


def _run(nodes: list[Node], ops: list[tuple[bool, Any, int, int]], strategy: str,
         placer: type[Placer]) -> tuple[list[object], object]:
    state = ClusterState(nodes)
    seen = replay_steps(state, placer(state, STRATEGIES[strategy].options), ops, _job)
    return seen, books(state)


@SETTINGS
@given(mixed_fleets(), steps, st.sampled_from(["fifo", "binpack", "cost", "affinity", "spread"]))
def test_the_same_results_and_state_as_the_general_path(
    nodes: list[Node], ops: list[tuple[bool, Any, int, int]], strategy: str
) -> None:
    assert _run(nodes, ops, strategy, Placer) == _run(nodes, ops, strategy, _General)


def test_one_task_takes_the_fullest_node_that_fits() -> None:
    state = ClusterState([Node("a", {"cpu": 8000, "memory": 16}),
                          Node("b", {"cpu": 4000, "memory": 16}),
                          Node("c", {"cpu": 4000, "memory": 2})])
    placer = Placer(state, STRATEGIES["binpack"].options)
    result = placer.place(Job("j", (TaskSpec({"cpu": 3000, "memory": 4}),)))
    assert result.tasks is not None
    [tp] = result.tasks
    assert (tp.node, tp.count, dict(tp.resources)) == ("b", 1, {"cpu": 3000, "memory": 4})
    assert state.free("b") == {"cpu": 1000, "memory": 12}
    refused = placer.place(Job("k", (TaskSpec({"cpu": 9000}),)))
    assert refused.tasks is None and refused.failure is not None
    assert (refused.failure.kind, refused.failure.message) == (
        Kind.NEVER, "0/3 nodes can take it: cpu: node capacity 4 < 9 requested (2); "
        "cpu: node capacity 8 < 9 requested (1)")


@SETTINGS
@given(mixed_fleets(), steps, st.sampled_from(["fifo", "binpack", "cost", "spread"]))
def test_attempt_gives_place_s_tasks_or_failure(
    nodes: list[Node], ops: list[tuple[bool, Any, int, int]], strategy: str
) -> None:
    assert _run(nodes, ops, strategy, Placer) == _run(nodes, ops, strategy, _Attempted)


def test_attempt_on_a_job_of_two_tasks_is_place_s_answer() -> None:
    def fresh() -> Placer:
        return Placer(ClusterState([Node("a", {"cpu": 4000}), Node("b", {"cpu": 2000})]),
                      STRATEGIES["binpack"].options)
    two = Job("j", (TaskSpec({"cpu": 2000}, 2),))
    assert fresh().attempt(two) == fresh().place(two).tasks
    big = Job("k", (TaskSpec({"cpu": 3000}, 2),))
    failure = fresh().attempt(big)
    assert isinstance(failure, Failure) and failure == fresh().place(big).failure
