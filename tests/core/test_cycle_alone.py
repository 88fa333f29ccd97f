"""``schedule_cycle``'s lone-job path (``cycle._alone``) held to the pass it
skips (hypothesis): on generated GPU traces, replays with and without it
start every job at the same instant on the same nodes and devices, and a
single cycle gives the same result and leaves the same state."""

from __future__ import annotations

from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apportion.core.model import Device, Node
from apportion.core.scheduling import ClusterState, Job, Queue, SchedulerConfig, TaskSpec, cycle
from apportion.core.simulator import SimConfig, SimJob, simulate

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def gpu_nodes(draw: st.DrawFn) -> list[Node]:
    """GPU nodes of one or several sizes, some with linked devices."""
    out = []
    for i in range(draw(st.integers(1, 6))):
        gpus = draw(st.sampled_from([2, 4, 8]))
        linked = draw(st.integers(0, 3)) == 0
        devices = tuple(Device(f"GPU-{k}", attrs={"numa": k % 2} if linked else {})
                        for k in range(gpus))
        out.append(Node(f"g{i}", {"gpu": gpus}, devices={"gpu": devices}))
    return out


@st.composite
def gpu_jobs(draw: st.DrawFn) -> list[SimJob]:
    """Jobs as the Philly reader makes them (a gang of whole nodes and a
    rest), arriving alone or several at an instant, some with deadlines,
    priorities or queues that hold them."""
    out = []
    t = 0.0
    for n in range(draw(st.integers(1, 25))):
        t += draw(st.sampled_from([0.0, 1.0, 5.0, 30.0, 200.0]))
        gpus = draw(st.integers(1, 12))
        tasks = (TaskSpec({"gpu": gpus}),) if gpus <= 8 else (
            TaskSpec({"gpu": 8}), TaskSpec({"gpu": gpus - 8}))
        run = float(draw(st.integers(1, 400)))
        estimate = draw(st.sampled_from([None, run, run / 2, run * 3]))
        deadline = t + 300.0 if draw(st.integers(0, 5)) == 0 else None
        out.append(SimJob(Job(
            f"p{n}", tasks, queue=draw(st.sampled_from(["a", "a", "b", "capped"])),
            submit_time=t, gang=True, runtime_estimate=estimate, deadline=deadline,
            priority=draw(st.sampled_from([0, 0, 5])), preemptible=draw(st.booleans()),
        ), run, estimate is not None))
    return out


configs = st.builds(
    SchedulerConfig,
    strategy=st.sampled_from(["fifo", "sjf", "fairshare", "adaptive", "priority", "spread"]),
    backfill=st.sampled_from(["none", "easy", "conservative"]),
    max_placements=st.sampled_from([None, None, 0, 1]),
    queue_required=st.booleans(),
)

QUEUES = {"a": Queue("a"), "capped": Queue("capped", quota={"gpu": 6})}


def _general(*args: object, **kwargs: object) -> None:
    return None


@SETTINGS
@given(gpu_nodes(), gpu_jobs(), configs)
def test_replays_start_the_same_with_and_without_it(
    nodes: list[Node], jobs: list[SimJob], config: SchedulerConfig
) -> None:
    fused = _replay(nodes, jobs, config)
    with mock.patch.object(cycle, "_alone", _general):
        plain = _replay(nodes, jobs, config)
    assert fused == plain


def _replay(nodes: list[Node], jobs: list[SimJob], config: SchedulerConfig) -> object:
    # The node model's cycle is the subject: no GPU fleet (``core/gpufleet``).
    result = simulate(jobs, nodes, SimConfig(config, primary="gpu"), queues=QUEUES,
                      counted_pool=False)
    return (result.records, result.metrics, result.unscheduled, result.series_queue)


def _books(state: ClusterState) -> object:
    return (
        {n: (r.free, dict(r.free_devices), dict(r.jobs), r.bucket and r.bucket.free)
         for n, r in state.nodes.items()},
        dict(state.running), list(state.ends), dict(state.free_totals), state.changes,
    )


@SETTINGS
@given(gpu_nodes(), gpu_jobs(), configs, st.data())
def test_one_cycle_gives_the_same_result_and_state(
    nodes: list[Node], jobs: list[SimJob], config: SchedulerConfig, data: st.DataObject
) -> None:
    # Some jobs already run (placed by plain cycles), then one more arrives.
    *earlier, last = [sj.job for sj in jobs]
    states = [ClusterState(nodes), ClusterState(nodes)]
    with mock.patch.object(cycle, "_alone", _general):
        for state in states:
            for j in earlier:
                cycle.schedule_cycle(state, [j], 0.0, config, queues=QUEUES)
    now = data.draw(st.sampled_from([0.0, 100.0]))
    fused = cycle.schedule_cycle(states[0], [last], now, config, queues=QUEUES)
    with mock.patch.object(cycle, "_alone", _general):
        plain = cycle.schedule_cycle(states[1], [last], now, config, queues=QUEUES)
    assert fused == plain
    assert _books(states[0]) == _books(states[1])


def test_a_lone_job_that_fits_starts_on_the_first_free_devices() -> None:
    nodes = [Node(f"g{i}", {"gpu": 4}, devices={"gpu": tuple(Device(f"GPU-{k}")
                                                            for k in range(4))})
             for i in range(2)]
    state = ClusterState(nodes)
    config = SchedulerConfig()
    cycle.schedule_cycle(state, [Job("a", (TaskSpec({"gpu": 3}),), runtime_estimate=10.0)],
                         0.0, config)
    result = cycle.schedule_cycle(
        state, [Job("b", (TaskSpec({"gpu": 1}),), runtime_estimate=5.0)], 2.0, config)
    [placement] = result.placements
    assert (placement.job_id, placement.start, placement.estimate) == ("b", 2.0, 5.0)
    [task] = placement.tasks
    # Best fit: the node with one GPU left, and that GPU.
    assert (task.node, task.devices) == ("g0", {"gpu": ("GPU-3",)})
    assert result.unplaced == {} and result.reservations == ()
