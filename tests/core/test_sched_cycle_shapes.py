"""Jobs behind a planned head answered per shape (``cycle._by_shape``, with
keys from ``shapekeys.ShapeKeys`` kept across cycles): the same answers,
in the same order, as ``cycle._one_by_one`` gives job by job, over cycles
on one state, with shapes that share a hash, jobs no failure of which
answers for another, and shapes the summed free capacity stops holding."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apportion.core.labels import parse_selector
from apportion.core.model import Device, Node
from apportion.core.reasons import Failure
from apportion.core.scheduling import (
    ClusterState,
    SchedulerConfig,
    cycle,
    job,
    parse_constraints,
    schedule_cycle,
)
from apportion.core.scheduling.jobs import Affinity, Job
from apportion.core.scheduling.shapekeys import ShapeKeys
from apportion.core.scheduling.status import not_enough_free
from sched_support import GI, P, looked_at, zoned

CPUS = [P // 2, P, 2 * P, 3 * P]
MEMS = [GI, 3 * GI]
SAME_HASH = 12345


def waiting(i: int, cpu: int, mem: int, est: float | None, kind: int) -> Job:
    """Job ``i``: ``kind`` 1 asks for zone z1, 2 gets a hash another shape
    has too, 3 must run beside a job named db (never cacheable)."""
    extra: dict[str, Any] = {}
    if kind == 1:
        extra["constraints"] = parse_constraints("zone=z1")
    if kind == 3:
        extra["affinity"] = (Affinity(parse_selector("name=db"), target="job", required=True),)
    j = job(f"j{i:03d}", {"cpu": cpu, "memory": mem}, submit_time=float(i),
            runtime_estimate=est, **extra)
    if kind == 2:
        object.__setattr__(j, "shape_hash", SAME_HASH)
    return j


def _cycles(running: list[tuple[int, int, float]], pending: list[Job], ends: list[int],
            behind: Any) -> list[tuple[Any, ...]]:
    """Cycles at 100 s, 160 s, ... on one state; before each after the first,
    the running job at each of ``ends`` (taken modulo their number) ends."""
    state = zoned(running)
    config = SchedulerConfig(strategy="fifo", backfill="easy")
    out = []
    now = 100.0
    with pytest.MonkeyPatch.context() as m:
        if behind is not None:
            m.setattr(cycle, "_behind_head", behind)
        for step in range(len(ends) + 1):
            if step:
                ids = sorted(state.running)
                if ids:
                    state.finish(ids[ends[step - 1] % len(ids)])
            result = schedule_cycle(state, pending, now, config)
            out.append((result.placements, result.reservations,
                        list(result.unplaced.items()), state.free_totals))
            started = {pl.job_id for pl in result.placements}
            pending = [j for j in pending if j.id not in started]
            now += 60.0
    return out


running_jobs = st.lists(
    st.tuples(st.integers(0, 3), st.sampled_from(CPUS), st.sampled_from([50.0, 300.0, 900.0])),
    max_size=12)
pending_jobs = st.lists(
    st.tuples(st.sampled_from(CPUS), st.sampled_from(MEMS),
              st.sampled_from([None, 10.0, 60.0, 5000.0]), st.sampled_from([0, 0, 1, 2, 3])),
    min_size=1, max_size=40)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(running_jobs, pending_jobs, st.lists(st.integers(0, 50), max_size=3))
def test_by_shape_decides_as_one_by_one(
    running: list[tuple[int, int, float]],
    pending: list[tuple[int, int, float | None, int]], ends: list[int],
) -> None:
    jobs = [waiting(i, *spec) for i, spec in enumerate(pending)]

    def one_by_one(p: Any, rest: Any, gated: bool) -> None:
        cycle._one_by_one(p, rest, gated)

    assert _cycles(running, jobs, ends, None) == _cycles(running, jobs, ends, one_by_one)


def _mixed_nodes(rng: random.Random) -> list[Node]:
    """Two to seven nodes in two zones and three racks, some with GPUs."""
    nodes = []
    for i in range(rng.randint(2, 7)):
        labels = {"zone": f"z{i % 2}", "rack": f"r{i % 3}"}
        if rng.random() < 0.25:
            gpus = (Device(f"g{i}a", model="A100"), Device(f"g{i}b", model="A100"))
            nodes.append(Node(f"n{i}", {"cpu": 8 * P, "memory": 16 * GI, "gpu": 2},
                              devices={"gpu": gpus}, labels={**labels, "gpu.model": "A100"}))
        else:
            nodes.append(Node(f"n{i}", {"cpu": rng.choice([4, 8]) * P, "memory": 8 * GI},
                              labels=labels))
    return nodes


def _mixed_job(rng: random.Random, job_id: str, t: float) -> Job:
    """A job of any kind: constraints, GPUs, affinities, priorities,
    preemptible, deadlines, queues, gangs, and now and then a shared hash."""
    res = {"cpu": rng.choice([P // 2, P, 2 * P, 3 * P, 4 * P, 6 * P]),
           "memory": rng.choice([GI, 2 * GI, 4 * GI])}
    kw: dict[str, Any] = {}
    r = rng.random()
    if r < 0.15:
        kw["constraints"] = parse_constraints(f"zone=z{rng.randint(0, 1)}")
    elif r < 0.22:
        res["gpu"] = rng.choice([1, 2])
    elif r < 0.3:
        kw["affinity"] = (Affinity(parse_selector(f"rack=r{rng.randint(0, 2)}"),
                                   target="node", required=True),)
    elif r < 0.36:
        kw["anti_affinity"] = (Affinity(parse_selector("name=web"), target="job",
                                        required=True),)
    elif r < 0.42:
        kw["affinity"] = (Affinity(parse_selector("name=db"), target="job", required=True),)
    if rng.random() < 0.2:
        kw["name"] = rng.choice(["web", "db"])
    if rng.random() < 0.3:
        kw["priority"] = rng.randint(0, 5)
    if rng.random() < 0.3:
        kw["preemptible"] = True
    if rng.random() < 0.15:
        kw["deadline"] = t + rng.choice([50.0, 500.0, 5000.0])
    j = job(job_id, res, count=rng.choice([1, 1, 1, 2, 3]), submit_time=t,
            runtime_estimate=rng.choice([None, 10.0, 60.0, 300.0, 5000.0]),
            queue=rng.choice(["a", "b"]), user=rng.choice(["u1", "u2"]), **kw)
    if rng.random() < 0.05:
        object.__setattr__(j, "shape_hash", SAME_HASH)
    return j


def _mixed_cycles(seed: int, behind: Any) -> list[tuple[Any, ...]]:
    """Up to six cycles on one state, of any strategy, backfilling and
    preemption; between them running jobs end, jobs arrive and a waiting
    job's id is sent again with another shape."""
    rng = random.Random(seed)
    config = SchedulerConfig(
        strategy=rng.choice(["fifo", "fifo", "priority", "sjf", "sla", "fairshare",
                             "spread", "cost", "adaptive"]),
        backfill=rng.choice(["easy", "easy", "easy", "none"]),
        preemption=rng.random() < 0.5, default_estimate=rng.choice([None, 100.0]))
    state = ClusterState(_mixed_nodes(rng))
    pending = [_mixed_job(rng, f"j{i}", float(i)) for i in range(rng.randint(5, 60))]
    out: list[tuple[Any, ...]] = []
    now = 0.0
    with pytest.MonkeyPatch.context() as m:
        if behind is not None:
            m.setattr(cycle, "_behind_head", behind)
        for _ in range(rng.randint(1, 6)):
            res = schedule_cycle(state, pending, now, config)
            out.append((res.placements, res.reservations, res.preemptions,
                        list(res.unplaced.items()), res.deadline_risks,
                        dict(state.free_totals)))
            started = {pl.job_id for pl in res.placements}
            pending = [j for j in pending if j.id not in started]
            now += rng.choice([10.0, 60.0, 400.0])
            ids = sorted(state.running)
            for _ in range(rng.randint(0, 3)):
                if ids:
                    state.finish(ids.pop(rng.randrange(len(ids))))
            pending += [_mixed_job(rng, f"k{now:.0f}-{i}", now) for i in range(rng.randint(0, 5))]
            if pending and rng.random() < 0.2:
                i = rng.randrange(len(pending))
                pending[i] = _mixed_job(rng, pending[i].id, pending[i].submit_time)
    return out


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1))
def test_by_shape_decides_as_one_by_one_on_mixed_clusters(seed: int) -> None:
    assert _mixed_cycles(seed, None) == _mixed_cycles(seed, cycle._one_by_one)


def _head_blocked(tail: list[str]) -> tuple[ClusterState, list[Job]]:
    """One core free on each node until 900 s; a head asking for a whole node
    (it waits), j1 of one core ending before 900 s (it plans the
    reservation and starts), then ``tail``: jobs of two cores running past
    900 s, all of one shape, in that order."""
    state = zoned([(i, 3 * P, 900.0) for i in range(4)])
    pending = [
        job("head", {"cpu": 4 * P, "memory": GI}, runtime_estimate=60.0),
        job("j1", {"cpu": P, "memory": GI}, submit_time=1.0, runtime_estimate=10.0),
    ]
    pending += [job(name, {"cpu": 2 * P, "memory": GI}, submit_time=2.0 + i,
                    runtime_estimate=5000.0) for i, name in enumerate(tail)]
    return state, pending


def test_jobs_of_a_failed_shape_are_answered_without_a_look(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # (``_head_blocked``) j1 plans the reservation, s00 fails past the head, and the 20 jobs
    # after it, of its shape, are answered per shape: _backfill never sees
    # them, and _by_shape is what answered them.
    state, pending = _head_blocked([f"s{i:02d}" for i in range(21)])
    looked = looked_at(monkeypatch, cycle)
    per_shape: list[int] = []
    by_shape = cycle._by_shape

    def counted(p: Any, jobs: list[Job]) -> None:
        per_shape.append(len(jobs))
        by_shape(p, jobs)

    monkeypatch.setattr(cycle, "_by_shape", counted)
    result = schedule_cycle(state, pending, 100.0, SchedulerConfig(strategy="fifo"))
    assert looked == ["j1", "s00"]
    assert per_shape == [21]
    assert [pl.job_id for pl in result.placements] == ["j1"]
    assert all(result.unplaced[f"s{i:02d}"] is result.unplaced["s00"] for i in range(1, 21))


def test_a_shape_short_of_free_capacity_is_looked_at_again() -> None:
    # 3, 2, 2 and 1 cores free until 900 s. The head (a whole node) is
    # reserved n0; j1 (3 cores, past 900 s) may not take n0's cores and
    # fails, and j1b, of its shape, is answered with its failure. j2..j4 (2
    # cores, ending before the head) start and leave 2 cores in all: j5, of
    # j1's shape too, is told what is short instead.
    state = zoned([(0, P, 900.0), (1, 2 * P, 900.0), (2, 2 * P, 900.0), (3, 3 * P, 900.0)])
    pending = [
        job("head", {"cpu": 4 * P, "memory": GI}, submit_time=0.0, runtime_estimate=60.0),
        job("j1", {"cpu": 3 * P, "memory": GI}, submit_time=1.0, runtime_estimate=5000.0),
        job("j1b", {"cpu": 3 * P, "memory": GI}, submit_time=1.5, runtime_estimate=5000.0),
        *(job(f"j{i}", {"cpu": 2 * P, "memory": GI}, submit_time=float(i),
              runtime_estimate=10.0) for i in range(2, 5)),
        job("j5", {"cpu": 3 * P, "memory": GI}, submit_time=5.0, runtime_estimate=5000.0),
    ]
    result = schedule_cycle(state, pending, 100.0, SchedulerConfig(strategy="fifo"))
    assert [pl.job_id for pl in result.placements] == ["j2", "j3", "j4"]
    assert result.reservations[0].nodes.keys() == {"n0"}
    assert result.unplaced["j1b"] is result.unplaced["j1"]
    assert result.unplaced["j5"] == Failure.of(not_enough_free("cpu", 2 * P))


def test_a_failure_met_behind_the_head_answers_its_shape(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # (``_head_blocked``) j1 plans its reservation; j2, the first of its shape, is looked at
    # and fails past the head; j3, of its shape, is answered without a look.
    state, pending = _head_blocked(["j2", "j3"])
    looked = looked_at(monkeypatch, cycle)
    result = schedule_cycle(state, pending, 100.0, SchedulerConfig(strategy="fifo"))
    assert looked == ["j1", "j2"]
    assert [pl.job_id for pl in result.placements] == ["j1"]
    assert result.unplaced["j3"] is result.unplaced["j2"]


def test_keys_are_learned_once_per_job_across_cycles(monkeypatch: pytest.MonkeyPatch) -> None:
    # One core free on each node until 900 s: the head (a whole node) waits,
    # and jobs of two cores past it fail.
    state = zoned([(i, 3 * P, 900.0) for i in range(4)])
    pending = [job("j0", {"cpu": 4 * P, "memory": GI}, runtime_estimate=60.0)]
    pending += [job(f"j{i}", {"cpu": 2 * P, "memory": GI}, submit_time=float(i),
                    runtime_estimate=5000.0) for i in range(1, 6)]
    learned: list[str] = []
    learn = ShapeKeys.learn

    def counted(self: ShapeKeys, j: Job) -> int:
        learned.append(j.id)
        return learn(self, j)

    monkeypatch.setattr(ShapeKeys, "learn", counted)
    config = SchedulerConfig(strategy="fifo")
    first = schedule_cycle(state, pending, 100.0, config)
    second = schedule_cycle(state, pending, 160.0, config)
    # j0 is the head; j1 plans its reservation (one by one); the rest are
    # met behind the planned head, each learned once, in the first cycle.
    assert learned == ["j2", "j3", "j4", "j5"]
    assert first.unplaced == second.unplaced


def test_shape_keys() -> None:
    state = zoned([])
    a1 = job("a1", {"cpu": P})
    a2 = job("a2", {"cpu": P})
    b = job("b", {"cpu": 2 * P})
    clash = job("c", {"cpu": 3 * P})
    object.__setattr__(clash, "shape_hash", b.shape_hash)
    beside = job("d", {"cpu": P},
                 affinity=(Affinity(parse_selector("name=db"), target="job", required=True),))
    keys = ShapeKeys.of(state, 10)
    assert [keys.key(j) for j in (a1, a2, b, clash, beside, a1)] == [1, 1, 2, 0, 0, 1]
    assert keys.totals[2] == {"cpu": 2 * P}
    assert ShapeKeys.of(state, 10) is keys
    # Remembering far more jobs than wait now: learned afresh.
    keys.of_job.update({f"x{i}": (a1, 1) for i in range(2000)})
    assert ShapeKeys.of(state, 10) is not keys


def test_shape_keys_start_afresh_when_shapes_outgrow_jobs() -> None:
    # One id sent again and again, each time with a new shape: one job
    # remembered, and a shape more each time. 1 job + 1024 spare shapes
    # (plus the keyless slot) are kept; one shape more and they start afresh.
    state = zoned([])
    keys = ShapeKeys.of(state, 1)
    for n in range(1, 1025):
        keys.key(job("same", {"cpu": n}))
    assert (len(keys.of_job), len(keys.shapes)) == (1, 1025)
    assert ShapeKeys.of(state, 1) is keys
    keys.key(job("same", {"cpu": 1025}))
    assert len(keys.shapes) == 1026
    fresh = ShapeKeys.of(state, 1)
    assert fresh is not keys
    assert (len(fresh.of_job), len(fresh.shapes)) == (0, 1)
