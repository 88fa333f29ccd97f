"""The jobs behind a blocked head (``cycle._behind_head``): the answer it
gives a shape remembered to fail past the head, without ``_backfill``, must
be ``_backfill``'s, for EASY and no backfilling, with and without a cycle
limit and quotas; and ``ClusterState._catch_up`` adds what jobs hold."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apportion.core.reasons import Failure
from apportion.core.scheduling import (
    ClusterState,
    Queue,
    SchedulerConfig,
    TaskPlacement,
    cycle,
    job,
    parse_constraints,
    schedule_cycle,
)
from apportion.core.scheduling.jobs import Job, RunningJob
from apportion.core.scheduling.status import not_enough_free
from sched_support import GI, P, looked_at, zoned

CPUS = [P // 2, P, 2 * P, 4 * P]
MEMS = [1 * GI, 4 * GI]


def _reference(p: Any, jobs: Iterable[Job], gated: bool) -> None:
    """What the cycle did before ``_behind_head``: every job to ``_backfill``."""
    for j in jobs:
        if gated and cycle._gate(p, j):
            continue
        cycle._backfill(p, j)


def _decisions(state: ClusterState, pending: list[Job], config: SchedulerConfig,
               queues: dict[str, Queue]) -> tuple[Any, ...]:
    result = schedule_cycle(state, pending, 100.0, config, queues=queues)
    return (result.placements, result.reservations, result.unplaced,
            sorted(state.running), state.free_totals)


running_jobs = st.lists(
    st.tuples(st.integers(0, 3), st.sampled_from(CPUS), st.sampled_from([50.0, 300.0, 900.0])),
    max_size=12)
pending_jobs = st.lists(
    st.tuples(st.sampled_from(CPUS), st.sampled_from(MEMS),
              st.sampled_from([None, 10.0, 60.0, 5000.0]), st.booleans(),
              st.sampled_from(["a", "b"])),
    min_size=1, max_size=25)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(running_jobs, pending_jobs, st.sampled_from(["easy", "none"]),
       st.sampled_from([None, 2, 5]), st.booleans())
def test_behind_head_decides_as_backfill_does(
    running: list[tuple[int, int, float]],
    pending: list[tuple[int, int, float | None, bool, str]], backfill: str,
    cap: int | None, quota: bool,
) -> None:
    jobs = [
        job(f"j{i:02d}", {"cpu": cpu, "memory": mem}, submit_time=float(i),
            runtime_estimate=est, queue=queue,
            constraints=parse_constraints("zone=z1" if zoned else ""))
        for i, (cpu, mem, est, zoned, queue) in enumerate(pending)
    ]
    config = SchedulerConfig(strategy="fifo", backfill=backfill, max_placements=cap)
    queues = {"a": Queue("a", {"cpu": 6 * P})} if quota else {}
    fast = _decisions(zoned(running), jobs, config, queues)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(cycle, "_behind_head", _reference)
        slow = _decisions(zoned(running), jobs, config, queues)
    assert fast == slow


def test_behind_head_answers_a_remembered_shape_without_backfill(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # n0 has one free core and frees the rest at 500 s, the others are full
    # until 900 s: the head, a whole node, is reserved n0 at 500 s. j1 runs
    # past that and may not take n0's core: it fails; j2, of j1's shape, is
    # answered with j1's failure without a look; j3 (another shape) is looked
    # at (and fails as well).
    state = zoned([(0, 2 * P, 500.0), (0, P, 500.0),
                     *((i, 4 * P, 900.0) for i in range(1, 4))])
    pending = [
        job("head", {"cpu": 4 * P, "memory": GI}, submit_time=0.0, runtime_estimate=60.0),
        job("j1", {"cpu": P, "memory": GI}, submit_time=1.0, runtime_estimate=5000.0),
        job("j2", {"cpu": P, "memory": GI}, submit_time=2.0, runtime_estimate=9000.0),
        job("j3", {"cpu": P // 2, "memory": GI}, submit_time=3.0, runtime_estimate=5000.0),
        job("j4", {"cpu": P, "memory": GI}, submit_time=4.0, runtime_estimate=10.0),
        job("j5", {"cpu": P, "memory": GI}, submit_time=5.0, runtime_estimate=5000.0),
    ]
    looked = looked_at(monkeypatch, cycle)
    result = schedule_cycle(state, pending, 100.0, SchedulerConfig(strategy="fifo"))
    # j4, of j1's shape, ends before the head starts: it may take the core;
    # then no core is free, and j5, of j1's shape too, is told what the head
    # was told (one shared answer per short resource, made at one free core).
    assert looked == ["j1", "j3", "j4", "j5"]
    assert result.unplaced["j2"] is result.unplaced["j1"]
    assert result.unplaced["j5"] == Failure.of(not_enough_free("cpu", P))
    assert result.unplaced["j5"] is result.unplaced["head"]
    assert [(pl.job_id, pl.tasks[0].node, pl.backfilled) for pl in result.placements] == [
        ("j4", "n0", True)]
    assert result.reservations[0].job_id == "head"
    assert result.reservations[0].start == 500.0


def test_catch_up_adds_what_each_task_holds() -> None:
    state = zoned([])
    gang = job("g", {"cpu": P, "memory": GI}, count=3, runtime_estimate=10.0)
    tasks = (TaskPlacement("n0", {"cpu": P, "memory": GI}, count=2),
             TaskPlacement("n1", {"cpu": P, "memory": GI}))
    lone = job("l", {"cpu": P // 2}, runtime_estimate=10.0)
    state._past = {"n1": {"cpu": 7}}
    state._catch_up([RunningJob(gang, 0.0, tasks, 10.0),
                     RunningJob(lone, 0.0, (TaskPlacement("n1", {"cpu": P // 2}),), 10.0)])
    assert state._past == {"n0": {"cpu": 2 * P, "memory": 2 * GI},
                           "n1": {"cpu": 7 + P + P // 2, "memory": GI}}
