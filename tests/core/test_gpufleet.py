"""The GPU fleet (``core/gpufleet.py``) held to the node model (hypothesis):
on generated fleets of identical GPU nodes and Philly-like traces (single
tasks, gangs of whole nodes and a rest, groups of several tasks, jobs
arriving together), a replay that starts on the fleet and hands over to the
node model at the first job that waits gives every job the same start, and
the same metrics and series, as the node model alone."""

from __future__ import annotations

from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apportion.core import gpufleet
from apportion.core.model import Device, Node, NodeState
from apportion.core.scheduling import ClusterState, Job, Queue, SchedulerConfig, TaskSpec
from apportion.core.scheduling.adaptive import RuntimeHistory
from apportion.core.scheduling.constraints import parse_constraints
from apportion.core.scheduling.cycle import schedule_cycle
from apportion.core.simulator import SimConfig, SimJob, SimResult, simulate

SETTINGS = settings(max_examples=80, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def fleets(draw: st.DrawFn) -> list[Node]:
    """Identical GPU nodes, listed out of name order."""
    gpus = draw(st.sampled_from([2, 4, 8]))
    count = draw(st.integers(1, 7))
    names = draw(st.permutations([f"g{i}" for i in range(count)]))
    devices = tuple(Device(f"GPU-{k}") for k in range(gpus))
    return [Node(name, {"gpu": gpus}, devices={"gpu": devices}) for name in names]


@st.composite
def traces(draw: st.DrawFn, per_node: int) -> list[SimJob]:
    """Jobs as the Philly reader makes them, and groups of several tasks,
    arriving alone or together; estimates right, short (the adaptive
    history corrects those) or missing."""
    out = []
    t = 0.0
    for n in range(draw(st.integers(1, 30))):
        t += draw(st.sampled_from([0.0, 0.0, 1.0, 5.0, 30.0, 200.0]))
        kind = draw(st.integers(0, 3))
        if kind == 3:
            tasks: tuple[TaskSpec, ...] = (TaskSpec({"gpu": draw(st.integers(1, per_node))},
                                                    draw(st.integers(2, 3))),)
        else:
            gpus = draw(st.integers(1, 2 * per_node + per_node // 2))
            full, rest = divmod(gpus, per_node)
            tasks = ((TaskSpec({"gpu": gpus}),) if gpus <= per_node else
                     (TaskSpec({"gpu": per_node}, full),) + ((TaskSpec({"gpu": rest}),)
                                                           if rest else ()))
        run = float(draw(st.integers(1, 400)))
        estimate = draw(st.sampled_from([None, run, run / 3, run * 2]))
        out.append(SimJob(Job(
            f"p{n}", tasks, queue=draw(st.sampled_from(["a", "a", "b", "c"])),
            submit_time=t, gang=True, runtime_estimate=estimate,
            priority=draw(st.sampled_from([0, 0, 5])),
        ), run, estimate is not None))
    return out


configs = st.builds(
    SchedulerConfig,
    strategy=st.sampled_from(["fifo", "sjf", "fairshare", "adaptive", "priority", "binpack"]),
    backfill=st.sampled_from(["none", "easy"]),
    default_estimate=st.sampled_from([None, None, 100.0]),
)


def _both(nodes: list[Node], jobs: list[SimJob], config: SchedulerConfig
          ) -> tuple[SimResult, SimResult]:
    sim = SimConfig(config, primary="gpu")
    queues = {"b": Queue("b", weight=2.0)}
    return (simulate(jobs, nodes, sim, queues=queues),
            simulate(jobs, nodes, sim, queues=queues, counted_pool=False))


def _same(a: SimResult, b: SimResult) -> None:
    assert a.records == b.records
    assert a.metrics == b.metrics
    assert (a.series_t, a.series_queue, a.series_util) == (b.series_t, b.series_queue,
                                                           b.series_util)
    assert a.unscheduled == b.unscheduled


@SETTINGS
@given(st.data(), fleets(), configs)
def test_replays_start_every_job_as_the_node_model(
    data: st.DataObject, nodes: list[Node], config: SchedulerConfig
) -> None:
    jobs = data.draw(traces(nodes[0].resources["gpu"]))
    assert gpufleet.eligible(nodes, [sj.job for sj in jobs], config, {}) is not None
    _same(*_both(nodes, jobs, config))


def test_a_waiting_job_hands_the_replay_over() -> None:
    nodes = [Node(f"g{i}", {"gpu": 4}, devices={"gpu": tuple(Device(f"GPU-{k}")
                                                           for k in range(4))})
             for i in range(2)]
    jobs = [SimJob(Job(f"p{n}", (TaskSpec({"gpu": g}, c),), submit_time=t,
                       runtime_estimate=run), run)
            for n, (t, g, c, run) in enumerate([(0.0, 1, 1, 50.0), (0.0, 4, 1, 80.0),
                                                (1.0, 2, 2, 30.0), (2.0, 3, 1, 10.0),
                                                (2.0, 1, 1, 5.0), (60.0, 4, 2, 20.0)])]
    with mock.patch.object(gpufleet.GpuFleet, "handover", autospec=True,
                           side_effect=gpufleet.GpuFleet.handover) as handover:
        fleet, node = _both(nodes, jobs, SchedulerConfig())
    assert handover.call_count == 1
    _same(fleet, node)
    assert max(r.wait for r in fleet.records) > 0


def test_what_the_fleet_does_not_model_stays_on_the_node_model() -> None:
    devices = {"gpu": tuple(Device(f"GPU-{k}") for k in range(8))}
    nodes = [Node(f"g{i}", {"gpu": 8}, devices=devices) for i in range(3)]
    job = Job("p0", (TaskSpec({"gpu": 2}),))
    ok = SchedulerConfig()
    assert gpufleet.eligible(nodes, [job], ok, {}) == ("gpu", 8)
    assert gpufleet.eligible(nodes, [job], SchedulerConfig(backfill="conservative"), {}) is None
    assert gpufleet.eligible(nodes, [job], SchedulerConfig(strategy="spread"), {}) is None
    assert gpufleet.eligible(nodes, [job], SchedulerConfig(max_placements=4), {}) is None
    assert gpufleet.eligible(nodes, [job], ok, {"a": Queue("a", quota={"gpu": 8})}) is None
    for other in (
        Job("p1", (TaskSpec({"gpu": 2}),), preemptible=True),
        Job("p1", (TaskSpec({"gpu": 2}),), deadline=5.0),
        Job("p1", (TaskSpec({"gpu": 9}),)),
        Job("p1", (TaskSpec({"gpu": 1, "cpu": 1}),)),
        Job("p1", (TaskSpec({"gpu": 1}),), constraints=parse_constraints(["gpu.model == A100"])),
    ):
        assert gpufleet.eligible(nodes, [job, other], ok, {}) is None
    linked = {"gpu": tuple(Device(f"GPU-{k}", attrs={"numa": k % 2}) for k in range(8))}
    for changed in (
        Node("g9", {"gpu": 4}, devices={"gpu": devices["gpu"][:4]}),
        Node("g9", {"gpu": 8}, devices=linked),
        Node("g9", {"gpu": 8}),
        Node("g9", {"gpu": 8}, devices=devices, labels={"zone": "b"}),
        Node("g9", {"gpu": 8}, devices=devices, state=NodeState.DRAINING),
    ):
        assert gpufleet.eligible([*nodes, changed], [job], ok, {}) is None


def _books(state: ClusterState) -> tuple[object, ...]:
    nodes = {name: (rec.free, rec.free_devices, rec.jobs) for name, rec in state.nodes.items()}
    running = {job_id: ([(tp.node, dict(tp.resources), dict(tp.devices), tp.count)
                         for tp in rj.tasks], rj.start, rj.estimate)
               for job_id, rj in state.running.items()}
    # A queue that ran jobs keeps its resources at zero, one that never did
    # has none: fair share reads both as a share of 0.
    queues = {q: {r: n for r, n in state.usage(q).items() if n} for q in ("a", "b", "c")}
    return nodes, running, list(state.ends), queues


@SETTINGS
@given(st.data(), fleets(), configs)
def test_the_handover_leaves_the_books_of_the_node_model(
    data: st.DataObject, nodes: list[Node], config: SchedulerConfig
) -> None:
    """Cycles and ends driven on both sides by hand, as long as the fleet
    starts every job: the state it hands over holds what the node model's
    holds (free GPUs, free devices, tasks, estimates, ends, each queue's use)."""
    jobs = [sj.job for sj in data.draw(traces(nodes[0].resources["gpu"]))]
    history = RuntimeHistory()
    shape = gpufleet.eligible(nodes, jobs, config, {})
    assert shape is not None
    fleet = gpufleet.GpuFleet(nodes, *shape, config, {}, history)
    state = ClusterState(nodes)
    now = 0.0
    for job in jobs:
        now = job.submit_time
        for job_id in data.draw(st.lists(st.sampled_from(sorted(state.running)), unique=True)
                                if state.running else st.just([])):
            state.finish(job_id)
            fleet.finish(job_id)
        started = fleet.cycle([job], now)
        result = schedule_cycle(state, [job], now, config, history=history)
        if started is None:
            assert not result.placements
            break
        assert [(p.job_id, p.estimate) for p in result.placements] == started
    handed = ClusterState(nodes)
    fleet.handover(handed)
    state.past_estimate(now)
    assert _books(handed) == _books(state)
