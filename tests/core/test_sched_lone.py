"""``lone.take_lone`` held to the general placement path (hypothesis): the
same placements, devices and state after every step, on GPU fleets of one
or several node types, with device models, labels, linked devices and
nodes that are not ready; then the start it gives on a literal case."""

from __future__ import annotations

from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apportion.core.model import Device, Node, NodeState
from apportion.core.scheduling import ClusterState, Job, TaskSpec, framework
from apportion.core.scheduling.constraints import NO_CONSTRAINTS, parse_constraints
from apportion.core.scheduling.framework import Placer
from apportion.core.scheduling.jobs import RunningJob
from apportion.core.scheduling.policies import STRATEGIES
from sched_support import books

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def fleets(draw: st.DrawFn) -> list[Node]:
    # Half the fleets are of one node type (the lone path's case), but for
    # a node or two; the others mix sizes, models, zones and resources.
    uniform = draw(st.booleans())
    first = None
    out = []
    for i in range(draw(st.integers(1, 10))):
        gpus = draw(st.sampled_from([2, 4, 8, 8]))
        model = draw(st.sampled_from(["A100", "A100", "V100"]))
        if uniform and first is not None and draw(st.integers(0, 5)):
            out.append(Node(f"g{i:02d}", first.resources, devices=first.devices,
                            labels=first.labels))
            continue
        mixed = draw(st.integers(0, 7)) == 0  # one node of two models: a device check
        linked = draw(st.integers(0, 4)) == 0
        devices = tuple(
            Device(f"GPU-{k}", "V100" if mixed and k == 0 else model,
                   attrs={"numa": k % 2} if linked else {})
            for k in range(gpus))
        resources = {"gpu": gpus}
        if draw(st.integers(0, 6)) == 0:
            resources["cpu"] = 8000
        state = NodeState.READY if draw(st.integers(0, 9)) else NodeState.DRAINING
        out.append(Node(f"g{i:02d}", resources, devices={"gpu": devices},
                        labels={"zone": draw(st.sampled_from(["a", "b"]))}, state=state))
        first = first or out[-1]
    return out


CONSTRAINTS = [NO_CONSTRAINTS, NO_CONSTRAINTS, NO_CONSTRAINTS,
               parse_constraints("gpu.model=A100"), parse_constraints("zone=a")]

steps = st.lists(st.tuples(st.booleans(), st.sampled_from([1, 1, 1, 2, 3, 4, 8, 9]),
                           st.sampled_from([1, 1, 1, 2]),
                           st.integers(0, len(CONSTRAINTS) - 1), st.integers(0, 40)),
                 min_size=1, max_size=30)


def _run(nodes: list[Node], ops: list[tuple[bool, int, int, int, int]], strategy: str
         ) -> tuple[list[object], object]:
    state = ClusterState(nodes)
    placer = Placer(state, STRATEGIES[strategy].options)
    seen: list[object] = []
    held: list[str] = []
    for n, (place, gpus, count, c, pick) in enumerate(ops):
        if place or not held:
            job = Job(f"j{n}", (TaskSpec({"gpu": gpus}, count),), gang=count > 1,
                      constraints=CONSTRAINTS[c])
            result = placer.place(job)
            seen.append(result)
            if result.tasks is not None:
                state.add_running(RunningJob(job, 0.0, result.tasks, None))
                held.append(job.id)
        else:
            seen.append(state.finish(held.pop(pick % len(held))).tasks)
    return seen, books(state)


@SETTINGS
@given(fleets(), steps, st.sampled_from(["fifo", "sjf", "binpack", "cost", "spread"]))
def test_the_same_placements_and_state_as_the_walk(
    nodes: list[Node], ops: list[tuple[bool, int, int, int, int]], strategy: str
) -> None:
    lone = _run(nodes, ops, strategy)
    with mock.patch.object(framework, "take_lone", lambda *args: None):
        walked = _run(nodes, ops, strategy)
    assert lone == walked


def test_a_lone_task_takes_the_tightest_node_and_its_first_free_gpus() -> None:
    nodes = [Node(f"g{i}", {"gpu": 8}, devices={"gpu": tuple(Device(f"GPU-{k}", "A100")
                                                            for k in range(8))})
             for i in range(3)]
    state = ClusterState(nodes)
    placer = Placer(state, STRATEGIES["fifo"].options)
    first = placer.place(Job("a", (TaskSpec({"gpu": 5}),)))
    second = placer.place(Job("b", (TaskSpec({"gpu": 2}),)))
    assert first.tasks is not None and second.tasks is not None
    [a], [b] = first.tasks, second.tasks
    assert (a.node, a.devices["gpu"]) == ("g0", ("GPU-0", "GPU-1", "GPU-2", "GPU-3", "GPU-4"))
    # Best fit: g0 has 3 free, the others 8.
    assert (b.node, b.devices["gpu"]) == ("g0", ("GPU-5", "GPU-6"))
    assert state.free("g0") == {"gpu": 1}


@SETTINGS
@given(st.booleans(), st.lists(st.tuples(st.booleans(), st.integers(1, 3), st.integers(0, 9)),
                               min_size=1, max_size=40))
def test_released_devices_go_back_in_node_order(
    linked: bool, ops: list[tuple[bool, int, int]]
) -> None:
    # Linked devices make ``devices.choose`` pick other than the first free
    # ones, so releases come back out of order.
    devices = tuple(Device(f"GPU-{k}", attrs={"numa": k % 3} if linked else {})
                    for k in range(8))
    state = ClusterState([Node("g0", {"gpu": 8}, devices={"gpu": devices})])
    placer = Placer(state, STRATEGIES["fifo"].options)
    held: dict[str, tuple[str, ...]] = {}
    for n, (place, gpus, pick) in enumerate(ops):
        if place or not held:
            job = Job(f"j{n}", (TaskSpec({"gpu": gpus}),))
            result = placer.place(job)
            if result.tasks is None:
                continue
            state.add_running(RunningJob(job, 0.0, result.tasks, None))
            held[job.id] = result.tasks[0].devices["gpu"]
        else:
            held.pop(state.finish(sorted(held)[pick % len(held)]).job.id)
        taken = {d for ids in held.values() for d in ids}
        assert state.nodes["g0"].free_devices["gpu"] == [
            d.id for d in devices if d.id not in taken]


def test_a_one_resource_request_aligns_on_a_one_resource_class() -> None:
    state = ClusterState([Node("g0", {"gpu": 8}), Node("c0", {"cpu": 4, "gpu": 2})])
    gpu_only, both = state.nodes["g0"].cls, state.nodes["c0"].cls
    assert state.align(gpu_only, {"gpu": 3}) == (3,)
    assert state.align(gpu_only, {"cpu": 1}) is None
    assert state.align(both, {"gpu": 1}) == (0, 1)
    assert state.align(gpu_only, {"gpu": 1, "cpu": 1}) is None
