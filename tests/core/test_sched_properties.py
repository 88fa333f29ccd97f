"""Invariants, checked on random clusters and queues (hypothesis):

* no placement ever oversubscribes a node, resource or device;
* a gang is never partial, and a job that does not start holds nothing;
* queue quotas are never exceeded;
* EASY never delays the head job's reservation: an exhaustive oracle computes
  the head's earliest start before and after the backfilled jobs start;
* priority aging bounds waiting: a job is ordered ahead of every job that
  arrives more than (max - min priority) / aging rate after it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apportion.core.model import Device, Node
from apportion.core.scheduling import (
    ClusterState,
    Job,
    Queue,
    SchedulerConfig,
    TaskPlacement,
    job,
    parse_constraints,
    schedule_cycle,
)
from apportion.core.scheduling.policies import STRATEGIES, OrderContext

P = 1000
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def clusters(draw: st.DrawFn) -> list[Node]:
    out = []
    for i in range(draw(st.integers(1, 6))):
        cpu = draw(st.sampled_from([1, 2, 4, 8])) * P
        gpus = draw(st.sampled_from([0, 0, 2, 4]))
        labels = {"zone": draw(st.sampled_from(["a", "b"]))}
        devices = {"gpu": tuple(Device(f"GPU-{k}", draw(st.sampled_from(["A100", "H100"])))
                                for k in range(gpus))} if gpus else {}
        resources = {"cpu": cpu, "memory": 16 * 2**30}
        out.append(Node(f"n{i}", resources, devices=devices, labels=labels))
    return out


@st.composite
def jobs(draw: st.DrawFn, n: int = 8) -> list[Job]:
    out = []
    for i in range(draw(st.integers(1, n))):
        request = {"cpu": draw(st.sampled_from([1, 2, 3, 4])) * P}
        if draw(st.booleans()):
            request["gpu"] = draw(st.integers(1, 2))
        constraints = draw(st.sampled_from(["", "zone=a", "gpu.model=H100"]))
        if "gpu" not in request and constraints.startswith("gpu"):
            constraints = ""
        out.append(job(
            f"j{i}", request, count=draw(st.integers(1, 4)),
            queue=draw(st.sampled_from(["q1", "q2"])),
            priority=draw(st.integers(0, 3)),
            submit_time=float(i),
            runtime_estimate=float(draw(st.integers(1, 100))),
            preemptible=draw(st.booleans()),
            constraints=parse_constraints(constraints),
        ))
    return out


def check_no_oversubscription(state: ClusterState) -> None:
    used: dict[str, dict[str, int]] = {n: {} for n in state.nodes}
    devices: dict[str, list[str]] = {n: [] for n in state.nodes}
    for rj in state.running.values():
        for tp in rj.tasks:
            for r, q in tp.resources.items():
                used[tp.node][r] = used[tp.node].get(r, 0) + q * tp.count
            for ids in tp.devices.values():
                devices[tp.node].extend(ids)
    for name, rec in state.nodes.items():
        cap = rec.node.resources
        for r, q in used[name].items():
            assert q <= cap[r], (name, r, q, cap[r])
        assert rec.free_vector() == {r: cap[r] - used[name].get(r, 0) for r in cap}
        assert len(devices[name]) == len(set(devices[name])), name


@SETTINGS
@given(clusters(), jobs(), st.sampled_from(["fifo", "priority", "fairshare", "spread", "sjf"]),
       st.sampled_from(["none", "easy", "conservative"]), st.data())
def test_cycles_never_oversubscribe_split_gangs_or_break_quotas(
    nodes: list[Node], pending: list[Job], strategy: str, backfill: str, data: st.DataObject
) -> None:
    state = ClusterState(nodes)
    queues = {"q1": Queue("q1", quota={"cpu": 6 * P}), "q2": Queue("q2", weight=2.0)}
    config = SchedulerConfig(strategy=strategy, backfill=backfill)
    waiting = list(pending)
    for step in range(3):
        r = schedule_cycle(state, waiting, float(step), config, queues=queues)
        check_no_oversubscription(state)
        for p in r.placements:
            placed = next(j for j in waiting if j.id == p.job_id)
            assert sum(t.count for t in p.tasks) == placed.task_count
        started = {p.job_id for p in r.placements}
        for j in waiting:
            if j.id not in started and j.id not in state.running:
                assert all(j.id not in rec.jobs for rec in state.nodes.values())
        assert state.usage("q1").get("cpu", 0) <= 6 * P
        waiting = [j for j in waiting if j.id not in started]
        waiting += [j for j in pending if j.id in {p.victim for p in r.preemptions}]
        # Some running jobs end between cycles.
        for job_id in sorted(state.running):
            if data.draw(st.booleans()):
                state.finish(job_id)
        check_no_oversubscription(state)


# -- EASY against an exhaustive oracle --------------------------------------------------


def oracle_start(caps: Sequence[int], running: Sequence[tuple[int, int, float]],
                 size: int, count: int, now: float) -> float | None:
    """Earliest time a gang of ``count`` tasks of ``size`` fits, trying every
    assignment of tasks to nodes at every instant some running job ends."""
    times = sorted({now, *(end for _, _, end in running if end > now)})
    for t in times:
        free = list(caps)
        for node, amount, end in running:
            if end > t:
                free[node] -= amount
        for assignment in itertools.product(range(len(caps)), repeat=count):
            need = [0] * len(caps)
            for node in assignment:
                need[node] += size
            if all(n <= f for n, f in zip(need, free, strict=True)):
                return t
    return None


def running_view(state: ClusterState, names: list[str], now: float,
                 skip: set[str] = frozenset()) -> list[tuple[int, int, float]]:  # type: ignore[assignment]
    out = []
    for rj in state.running.values():
        if rj.job.id in skip:
            continue
        end = rj.expected_end(now)
        assert end is not None
        for tp in rj.tasks:
            out.append((names.index(tp.node), tp.resources["cpu"] * tp.count // P, end))
    return out


@settings(max_examples=300, deadline=None)
@given(
    caps=st.lists(st.integers(1, 3), min_size=1, max_size=3),
    busy=st.lists(st.tuples(st.integers(0, 2), st.integers(1, 3), st.integers(1, 60)),
                  max_size=4),
    queue=st.lists(st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 80)),
                   min_size=2, max_size=5),
)
def test_easy_never_delays_the_head(
    caps: list[int], busy: list[tuple[int, int, int]], queue: list[tuple[int, int, int]]
) -> None:
    names = [f"n{i}" for i in range(len(caps))]
    # Two node sizes in one cluster force the per-node shadow; one size, the pool.
    state = ClusterState([Node(n, {"cpu": c * P}) for n, c in zip(names, caps, strict=True)])
    for k, (node, amount, est) in enumerate(busy):
        node %= len(caps)
        amount = min(amount, state.free(names[node])["cpu"] // P)
        if amount:
            r = job(f"r{k}", {"cpu": amount * P}, runtime_estimate=float(est))
            state.start(r, [TaskPlacement(names[node], {"cpu": amount * P})], 0.0, float(est))
    now = 10.0
    pending = [job(f"q{i}", {"cpu": size * P}, count=count, runtime_estimate=float(est),
                   submit_time=float(i)) for i, (size, count, est) in enumerate(queue)]
    pending = [j for j in pending if oracle_start(caps, [], j.tasks[0].resources["cpu"] // P,
                                                  j.tasks[0].count, now) is not None]
    if not pending:
        return
    before = {rj for rj in state.running}
    result = schedule_cycle(state, pending, now, SchedulerConfig(backfill="easy"))
    if not result.reservations:
        return
    head_id = result.reservations[0].job_id
    head = next(j for j in pending if j.id == head_id)
    order = [j.id for j in pending]
    ahead = {p.job_id for p in result.placements if order.index(p.job_id) < order.index(head_id)}
    backfilled = {p.job_id for p in result.placements} - ahead
    size, count = head.tasks[0].resources["cpu"] // P, head.tasks[0].count
    without = running_view(state, names, now, skip=backfilled)
    with_all = running_view(state, names, now)
    t_before = oracle_start(caps, without, size, count, now)
    t_after = oracle_start(caps, with_all, size, count, now)
    assert t_before == result.reservations[0].start
    assert t_before is not None and t_after is not None
    assert t_after <= t_before, (t_before, t_after, backfilled, before)


# -- aging ----------------------------------------------------------------------------


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 10), st.integers(0, 5000)), min_size=2, max_size=30),
       st.integers(0, 20000))
def test_priority_aging_bounds_waiting(spec: list[tuple[int, int]], now_offset: int) -> None:
    rate = 0.01
    lo, hi = 0, 10
    pending = [job(f"j{i}", {"cpu": P}, priority=p, submit_time=float(s))
               for i, (p, s) in enumerate(spec)]
    now = float(max(s for _, s in spec) + now_offset)
    ctx = OrderContext(now, {}, ClusterState(), lambda j: None, rate)
    ordered = [j.id for j in STRATEGIES["priority"].order.order(pending, ctx)]
    for a in pending:
        for b in pending:
            if b.submit_time > a.submit_time + (hi - lo) / rate:
                assert ordered.index(a.id) < ordered.index(b.id)
