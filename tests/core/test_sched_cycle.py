"""schedule_cycle as the server calls it: quotas, submission checks,
deadlines, fragmentation, gangs."""

from __future__ import annotations

import pytest

from apportion.core.model import Node, NodeState
from apportion.core.scheduling import (
    ClusterState,
    JobRejected,
    Queue,
    SchedulerConfig,
    TaskPlacement,
    TaskSpec,
    fragmentation,
    job,
    parse_constraints,
    schedule_cycle,
    validate_job,
)
from apportion.core.scheduling.jobs import Job

GI = 2**30
P = 1000


def small() -> ClusterState:
    return ClusterState([Node(f"n{i}", {"cpu": 4 * P, "memory": 8 * GI}) for i in range(2)])


def test_quota_holds_jobs_but_not_the_queue() -> None:
    queues = {"a": Queue("a", quota={"cpu": 3 * P}), "b": Queue("b")}
    jobs = [job("a1", {"cpu": 2 * P}, queue="a", submit_time=1),
            job("a2", {"cpu": 2 * P}, queue="a", submit_time=2),
            job("b1", {"cpu": 2 * P}, queue="b", submit_time=3)]
    state = small()
    r = schedule_cycle(state, jobs, 0.0, SchedulerConfig(backfill="none"), queues=queues)
    assert [p.job_id for p in r.placements] == ["a1", "b1"]
    assert r.unplaced["a2"].message == "queue a quota: cpu 2 of 3 in use, job needs 2"
    assert state.usage("a")["cpu"] == 2 * P


def test_validate_refuses_what_can_never_run() -> None:
    queues = {"a": Queue("a", quota={"cpu": 6 * P}, min_priority=0, max_priority=10)}
    state = ClusterState([
        Node("n0", {"cpu": 4 * P, "memory": 8 * GI}),
        Node("n1", {"cpu": 4 * P, "memory": 8 * GI}, state=NodeState.CORDONED)])
    validate_job(job("ok", {"cpu": 3 * P}, count=2, queue="a"), queues, state)
    cases = {
        "queue: unknown queue 'x' (queues: a)": job("j", {"cpu": P}, queue="x"),
        "priority: 11 is outside queue a's bounds [0, 10]": job("j", {"cpu": P}, queue="a",
                                                                 priority=11),
        "resources.cpu: the job needs 8 in all but queue a's quota is 6; it can never fit":
            job("j", {"cpu": 2 * P}, count=4, queue="a"),
        "no node can ever hold this task: 2 node(s): cpu: node capacity 4 < 5 requested":
            job("j", {"cpu": 5 * P}, queue="a"),
        "resources.gpu: no node has gpu": job("j", {"gpu": 1}, queue="a"),
    }
    for message, j in cases.items():
        with pytest.raises(JobRejected) as err:
            validate_job(j, queues, state)
        assert err.value.message == message


def test_gang_is_all_or_nothing() -> None:
    state = small()
    gang = job("g", {"cpu": 3 * P}, count=3)
    r = schedule_cycle(state, [gang], 0.0, SchedulerConfig())
    assert r.placements == ()
    assert state.free_total()["cpu"] == 8 * P
    assert r.unplaced["g"].message == "not enough cpu free on ready nodes now (8 in all)"


def test_a_gang_of_mixed_tasks_places_the_big_one_first() -> None:
    state = small()
    gang = Job("g", (TaskSpec({"cpu": P}, 4), TaskSpec({"cpu": 4 * P}, 1)), gang=True)
    r = schedule_cycle(state, [gang], 0.0, SchedulerConfig())
    tasks = sorted((t.resources["cpu"], t.count) for t in r.placements[0].tasks)
    assert tasks == [(P, 4), (4 * P, 1)]
    assert len({t.node for t in r.placements[0].tasks}) == 2


def test_non_gang_jobs_split_into_units() -> None:
    bag = job("bag", {"cpu": P}, count=3, gang=False)
    assert [u.id for u in bag.units()] == ["bag#0", "bag#1", "bag#2"]
    assert job("g", {"cpu": P}, count=3).units()[0].task_count == 3


def test_deadline_risks_are_reported() -> None:
    state = ClusterState([Node("n", {"cpu": P})])
    hog = job("hog", {"cpu": P})
    state.start(hog, [TaskPlacement("n", {"cpu": P})], 0.0, 100.0)
    jobs = [job("late", {"cpu": P}, runtime_estimate=50, deadline=120, submit_time=1),
            job("hopeless", {"cpu": P}, runtime_estimate=500, deadline=200, submit_time=2)]
    r = schedule_cycle(state, jobs, 10.0, SchedulerConfig(strategy="sla"))
    risks = {d.job_id: (d.expected_end, d.certain) for d in r.deadline_risks}
    assert risks == {"hopeless": (510.0, True), "late": (150.0, False)}


def test_max_placements_caps_a_cycle() -> None:
    state = small()
    jobs = [job(f"j{i}", {"cpu": P}, submit_time=i) for i in range(5)]
    r = schedule_cycle(state, jobs, 0.0, SchedulerConfig(max_placements=2))
    assert [p.job_id for p in r.placements] == ["j0", "j1"]
    assert r.unplaced["j4"].message == "cycle placement limit reached"


def test_never_fitting_job_does_not_block_the_queue() -> None:
    state = small()
    jobs = [job("odd", {"cpu": P}, constraints=parse_constraints("zone=mars"), submit_time=0),
            job("next", {"cpu": P}, submit_time=1)]
    r = schedule_cycle(state, jobs, 0.0, SchedulerConfig(backfill="none"))
    assert [p.job_id for p in r.placements] == ["next"]
    assert r.unplaced["odd"].kind.value == "never"
    assert r.unplaced["odd"].message == "0/2 nodes can take it: label mismatch: zone=mars (2)"


def test_fragmentation_reports_stranded_capacity() -> None:
    state = small()
    a = job("a", {"cpu": P, "memory": 8 * GI})
    state.start(a, [TaskPlacement("n0", {"cpu": P, "memory": 8 * GI})], 0.0)
    report = fragmentation(state, [job("p", {"cpu": 2 * P, "memory": GI})])
    assert report.stranded == {"cpu": 3 * P}
    assert report.stranded_nodes == 1
    assert report.share("cpu") == pytest.approx(3 / 7)
    assert fragmentation(state, []).stranded == {}
