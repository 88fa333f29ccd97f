"""schedule_cycle as the server calls it: quotas, submission checks,
deadlines, fragmentation, gangs."""

from __future__ import annotations

from typing import Any

import pytest

from apportion.core.errors import InvalidInput
from apportion.core.labels import parse_selector
from apportion.core.model import Node, NodeState
from apportion.core.reasons import Code, Failure, Kind, Reason
from apportion.core.scheduling import (
    Affinity,
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
from apportion.core.scheduling.adaptive import RuntimeHistory
from apportion.core.scheduling.cycle import DeadlineRisk, estimator, pending_ends
from apportion.core.scheduling.jobs import Job
from apportion.core.scheduling.policies import strategy
from apportion.core.scheduling.status import BACKFILL, QUOTA, not_enough_free, over_quota

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


# -- the cycle's own paths, one literal case each (issue 15, mutation testing) --

C = 1000  # one processor (P above is the same; C keeps the procs helpers apart)


def procs(n: int) -> ClusterState:
    return ClusterState([Node(f"n{i}", {"cpu": C}) for i in range(n)])


def run_for(state: ClusterState, job_id: str, nodes: list[str], start: float,
            est: float | None, **kw: Any) -> None:
    j = job(job_id, {"cpu": C}, count=len(nodes), runtime_estimate=est, **kw)
    state.start(j, [TaskPlacement(n, {"cpu": C}) for n in nodes], start, est)


def busy(stage: str, message: str) -> Failure:
    return Failure.of(Reason(stage, Code.INSUFFICIENT, Kind.BUSY, message))


def test_config_refuses_an_unknown_backfill_mode_or_strategy() -> None:
    with pytest.raises(InvalidInput) as err:
        SchedulerConfig(backfill="eager")
    assert err.value.message == "backfill: unknown 'eager'; use none, easy or conservative"
    assert err.value.data == {"field": "backfill"}
    with pytest.raises(InvalidInput):
        SchedulerConfig(strategy="nonesuch")
    assert SchedulerConfig(backfill="conservative").backfill == "conservative"


def test_estimator_prefers_learned_then_given_then_default() -> None:
    given = job("g", {"cpu": C}, runtime_estimate=30.0)
    bare = job("b", {"cpu": C})
    fifo = estimator(strategy("fifo"), RuntimeHistory(), 7.0)
    assert (fifo(given), fifo(bare)) == (30.0, 7.0)
    assert estimator(strategy("fifo"), None, None)(bare) is None
    # adaptive with an empty history: no learned value yet, so the default,
    # even for a job with its own estimate (the history weighs that one).
    learned = estimator(strategy("adaptive"), RuntimeHistory(), 7.0)
    assert learned(bare) == 7.0
    assert estimator(strategy("adaptive"), None, 7.0)(given) == 30.0


def test_an_unknown_queue_is_held_when_queues_are_required() -> None:
    state = procs(2)
    jobs = [job("x1", {"cpu": C}, queue="x", submit_time=1),
            job("a1", {"cpu": C}, queue="a", submit_time=2)]
    queues = {"a": Queue("a")}
    r = schedule_cycle(state, jobs, 0.0, SchedulerConfig(queue_required=True), queues=queues)
    assert [p.job_id for p in r.placements] == ["a1"]
    assert r.unplaced == {
        "x1": Failure.of(Reason(QUOTA, Code.QUEUE, Kind.NEVER, "unknown queue x"))}
    r = schedule_cycle(procs(2), jobs, 0.0, SchedulerConfig(), queues=queues)
    assert [p.job_id for p in r.placements] == ["x1", "a1"]


def test_a_quota_is_met_exactly_and_counts_nothing_used_as_zero() -> None:
    queues = {"a": Queue("a", quota={"cpu": 2 * C, "gpu": 4})}
    state = procs(4)
    fits = job("fits", {"cpu": C}, count=2, queue="a", submit_time=1)
    r = schedule_cycle(state, [fits], 0.0, SchedulerConfig(), queues=queues)
    assert [p.job_id for p in r.placements] == ["fits"]
    big = job("big", {"cpu": C}, count=3, queue="b", submit_time=2)
    r = schedule_cycle(procs(4), [job("over", {"cpu": C}, count=3, queue="a")], 0.0,
                       SchedulerConfig(), queues=queues)
    assert r.unplaced["over"] == Failure.of(over_quota("a", "cpu", 0, 2 * C, 3 * C))
    assert r.unplaced["over"].message == "queue a quota: cpu 0 of 2 in use, job needs 3"
    r = schedule_cycle(procs(4), [big], 0.0, SchedulerConfig(), queues=queues)
    assert [p.job_id for p in r.placements] == ["big"]


def test_a_head_whose_start_cannot_be_planned_lets_nothing_pass() -> None:
    state = procs(2)
    run_for(state, "r", ["n0"], 0.0, None)
    jobs = [job("head", {"cpu": C}, count=2, runtime_estimate=50, submit_time=1),
            job("small", {"cpu": C}, runtime_estimate=5, submit_time=2),
            job("more", {"cpu": C}, runtime_estimate=5, submit_time=3)]
    r = schedule_cycle(state, jobs, 10.0, SchedulerConfig())
    assert r.placements == () and r.reservations == ()
    why = busy(BACKFILL, "waiting behind head, whose start cannot be planned "
                         "(running jobs without run time estimates)")
    assert r.unplaced["small"] == why
    assert r.unplaced["more"] == why


def test_the_head_reservation_is_reported_when_nothing_could_pass() -> None:
    state = procs(2)
    run_for(state, "r", ["n0"], 0.0, 100.0)
    r = schedule_cycle(state, [job("head", {"cpu": C}, count=2, runtime_estimate=50)], 10.0,
                       SchedulerConfig())
    assert [(v.job_id, v.start) for v in r.reservations] == [("head", 100.0)]
    r = schedule_cycle(state, [job("head", {"cpu": C}, count=2, runtime_estimate=50)], 10.0,
                       SchedulerConfig(backfill="none"))
    assert r.reservations == ()


def test_a_backfill_candidate_short_in_total_is_told_so() -> None:
    state = procs(2)
    run_for(state, "r", ["n0"], 0.0, 100.0)
    jobs = [job("head", {"cpu": C}, count=2, runtime_estimate=50, submit_time=1),
            job("gpu", {"gpu": 1}, runtime_estimate=5, submit_time=2),
            job("wide", {"cpu": C}, count=2, gang=False, runtime_estimate=5, submit_time=3)]
    r = schedule_cycle(state, jobs, 10.0, SchedulerConfig())
    assert r.unplaced["gpu"] == Failure.of(not_enough_free("gpu", 0))
    assert r.unplaced["wide"] == Failure.of(not_enough_free("cpu", C))
    assert r.unplaced["wide"].message == "not enough cpu free on ready nodes now (1 in all)"


def test_a_job_past_a_pool_head_that_is_not_in_units_is_planned_node_by_node() -> None:
    # The head is planned on the pool of whole processors; "half" is not in
    # whole units, so the head is planned again node by node, and "long"
    # may then use only what the head leaves on its nodes (nothing).
    state = procs(4)
    run_for(state, "r", ["n0", "n1"], 0.0, 100.0)
    jobs = [job("head", {"cpu": C}, count=3, runtime_estimate=50, submit_time=10),
            job("half", {"cpu": C // 2}, runtime_estimate=500, submit_time=11),
            job("long", {"cpu": C}, runtime_estimate=500, submit_time=12)]
    r = schedule_cycle(state, jobs, 20.0, SchedulerConfig())
    assert [(p.job_id, p.tasks[0].node, p.backfilled) for p in r.placements] == [
        ("half", "n3", True)]
    assert [(v.job_id, v.start) for v in r.reservations] == [("head", 100.0)]
    assert r.unplaced["long"].kind is Kind.BUSY
    assert "long" not in state.running


def test_pending_ends_lists_known_ends_soonest_first() -> None:
    state = procs(3)
    run_for(state, "b", ["n0"], 0.0, 50.0)
    run_for(state, "a", ["n1"], 0.0, 5.0)
    run_for(state, "u", ["n2"], 0.0, None)
    assert pending_ends(state, 10.0) == [(10.0, "a"), (50.0, "b")]


def placed(r: Any) -> list[tuple[str, tuple[str, ...], bool]]:
    return [(p.job_id, tuple(t.node for t in p.tasks), p.backfilled) for p in r.placements]


def messages(r: Any) -> dict[str, str]:
    return {k: f.message for k, f in r.unplaced.items()}


def test_a_gang_some_task_of_which_no_node_takes_does_not_block() -> None:
    # Short in total (6 > 4) but its second task fits no node: never, so
    # the queue behind it moves (backfill none would stop at a busy one).
    state = ClusterState([Node(f"n{i}", {"cpu": 2 * C}) for i in range(2)])
    odd = Job("odd", (TaskSpec({"cpu": C}, 1), TaskSpec({"cpu": 5 * C}, 1)), gang=True,
              submit_time=1)
    r = schedule_cycle(state, [odd, job("next", {"cpu": C}, submit_time=2)], 0.0,
                       SchedulerConfig(backfill="none"))
    assert placed(r) == [("next", ("n0",), False)]
    assert r.unplaced["odd"].kind is Kind.NEVER


def test_easy_per_node_prefers_the_head_nodes_for_jobs_that_end_first() -> None:
    state = ClusterState([Node("big", {"cpu": 4 * C}), Node("small", {"cpu": 2 * C})])
    state.start(job("hog", {"cpu": 2 * C}), [TaskPlacement("big", {"cpu": 2 * C})], 0.0, 100.0)
    jobs = [job("head", {"cpu": 3 * C}, runtime_estimate=50, submit_time=1),
            job("short", {"cpu": C}, runtime_estimate=10, submit_time=2),
            job("long1", {"cpu": C}, runtime_estimate=900, submit_time=3),
            job("long2", {"cpu": C}, runtime_estimate=900, submit_time=4),
            job("long3", {"cpu": C}, runtime_estimate=900, submit_time=5),
            job("short2", {"cpu": C}, runtime_estimate=10, submit_time=6)]
    r = schedule_cycle(state, jobs, 20.0, SchedulerConfig())
    # short ends by 100, so it goes on the head's node; the long ones keep
    # off it (big has 1 left at 100, and short has taken it off the extra).
    assert placed(r) == [("short", ("big",), True), ("long1", ("small",), True),
                         ("long2", ("small",), True), ("short2", ("big",), True)]
    assert [(v.job_id, v.start, v.nodes) for v in r.reservations] == [
        ("head", 100.0, {"big": {"cpu": 3 * C}})]
    assert list(r.unplaced) == ["head", "long3"]


def test_easy_pool_a_job_ending_at_the_reservation_passes_one_after_does_not() -> None:
    state = procs(4)
    run_for(state, "r", ["n0", "n1"], 0.0, 100.0)
    jobs = [job("head", {"cpu": C}, count=4, runtime_estimate=50, submit_time=10),
            job("ends", {"cpu": C}, runtime_estimate=80, submit_time=11),
            job("late", {"cpu": C}, runtime_estimate=81, submit_time=12)]
    r = schedule_cycle(state, jobs, 20.0, SchedulerConfig())
    assert placed(r) == [("ends", ("n2",), True)]
    assert r.unplaced["late"] == busy(BACKFILL, "would delay head, reserved to start at 100")


def test_easy_pool_spends_what_the_head_leaves() -> None:
    state = procs(6)
    run_for(state, "r", ["n0", "n1", "n2", "n3"], 0.0, 100.0)
    jobs = [job("head", {"cpu": C}, count=5, runtime_estimate=50, submit_time=10),
            job("long1", {"cpu": C}, runtime_estimate=500, submit_time=11),
            job("long2", {"cpu": C}, runtime_estimate=500, submit_time=12)]
    r = schedule_cycle(state, jobs, 20.0, SchedulerConfig())
    assert [p.job_id for p in r.placements] == ["long1"]
    assert r.unplaced["long2"].message == "would delay head, reserved to start at 100"


def low(state: ClusterState, job_id: str, node: str, cpu: int, prio: int,
        est: float | None = None) -> None:
    j = job(job_id, {"cpu": cpu}, priority=prio, preemptible=True, runtime_estimate=est)
    state.start(j, [TaskPlacement(node, {"cpu": cpu})], 0.0, est)


def test_preemption_stops_after_the_attempts_allowed() -> None:
    state = procs(3)
    for i in range(3):
        low(state, f"v{i}", f"n{i}", C, 1)
    urgent = [job(f"u{i}", {"cpu": C}, priority=10, submit_time=i) for i in range(3)]
    r = schedule_cycle(state, urgent, 10.0,
                       SchedulerConfig(strategy="priority", max_preemption_attempts=2))
    assert [(p.job_id, p.backfilled, p.preempted) for p in r.placements] == [
        ("u0", False, ("v0",)), ("u1", False, ("v1",))]
    assert [(x.victim, x.by, x.nodes) for x in r.preemptions] == [
        ("v0", "u0", ("n0",)), ("v1", "u1", ("n1",))]
    assert list(r.unplaced) == ["u2"]


def test_no_preemption_when_a_known_end_comes_within_the_grace_time() -> None:
    cfg = SchedulerConfig(strategy="priority")
    state = ClusterState([Node("a", {"cpu": C})])
    low(state, "v", "a", C, 1, est=40.0)  # ends at 40 = 10 + 30
    r = schedule_cycle(state, [job("u", {"cpu": C}, priority=10)], 10.0, cfg)
    assert r.preemptions == ()
    assert [(v.job_id, v.start) for v in r.reservations] == [("u", 40.0)]
    state = ClusterState([Node("a", {"cpu": C})])
    low(state, "v", "a", C, 1, est=41.0)
    r = schedule_cycle(state, [job("u", {"cpu": C}, priority=10)], 10.0, cfg)
    assert [(x.victim, x.by) for x in r.preemptions] == [("v", "u")]


def test_a_victim_on_two_nodes_is_reported_with_both_sorted() -> None:
    def state() -> ClusterState:
        s = ClusterState([Node("b", {"cpu": C}), Node("a", {"cpu": C})])
        v = job("v", {"cpu": C}, count=2, priority=1, preemptible=True)
        s.start(v, [TaskPlacement("b", {"cpu": C}), TaskPlacement("a", {"cpu": C})], 0.0, None)
        return s

    u = job("u", {"cpu": C}, count=2, priority=10)
    r = schedule_cycle(state(), [u], 10.0, SchedulerConfig(strategy="priority"))
    assert [(x.victim, x.by, x.nodes) for x in r.preemptions] == [("v", "u", ("a", "b"))]
    assert [(p.job_id, p.start, p.estimate, p.preempted) for p in r.placements] == [
        ("u", 10.0, None, ("v",))]
    r = schedule_cycle(state(), [u], 10.0, SchedulerConfig(strategy="priority", preemption=False))
    assert r.preemptions == () and r.placements == ()


def test_conservative_preempts_for_a_fragmented_fit_and_for_a_short_total() -> None:
    cfg = SchedulerConfig(strategy="priority", backfill="conservative")
    state = ClusterState([Node(f"n{i}", {"cpu": 2 * C}) for i in range(2)])
    low(state, "v0", "n0", C, 1)
    low(state, "v1", "n1", C, 1)
    jobs = [job("u", {"cpu": 2 * C}, priority=10, submit_time=0),
            job("w", {"cpu": 2 * C}, priority=5, submit_time=1)]
    r = schedule_cycle(state, jobs, 10.0, cfg)
    assert [(p.job_id, p.preempted) for p in r.placements] == [("u", ("v0",)), ("w", ("v1",))]
    state = ClusterState([Node("n0", {"cpu": 2 * C})])
    low(state, "v0", "n0", 2 * C, 1)
    jobs = [job("u", {"cpu": 2 * C}, priority=10, submit_time=0),
            job("w", {"cpu": C}, priority=5, submit_time=1)]
    r = schedule_cycle(state, jobs, 10.0, cfg)
    assert [(p.job_id, p.preempted) for p in r.placements] == [("u", ("v0",))]
    # The plan is made again after a preemption: u's end is not known.
    assert r.unplaced == {
        "w": busy(BACKFILL, "waiting; its start cannot be planned from known run times")}


def conservative_queue() -> list[Job]:
    return [job("wide", {"cpu": 2 * C}, runtime_estimate=50, submit_time=1),
            job("gpu", {"gpu": 1}, submit_time=2),
            job("mars", {"cpu": C}, constraints=parse_constraints("zone=mars"), submit_time=3),
            job("a", {"cpu": C}, runtime_estimate=10, submit_time=4),
            job("b", {"cpu": 2 * C}, runtime_estimate=10, submit_time=5),
            job("c", {"cpu": 3 * C}, runtime_estimate=10, submit_time=6)]


def conservative_run(depth: int | None) -> Any:
    # Two nodes of 2; one processor of each busy, until 100 and 200: the
    # sums fit "wide" now, the nodes do not (fragmentation), so it is
    # planned at the first end.
    state = ClusterState([Node(f"n{i}", {"cpu": 2 * C}) for i in range(2)])
    run_for(state, "r0", ["n0"], 0.0, 100.0)
    run_for(state, "r1", ["n1"], 0.0, 200.0)
    return schedule_cycle(state, conservative_queue(), 20.0,
                          SchedulerConfig(backfill="conservative", reservation_depth=depth))


def test_conservative_plans_every_waiting_job() -> None:
    r = conservative_run(None)
    assert placed(r) == [("a", ("n0",), True)]
    assert [(v.job_id, v.start, v.nodes) for v in r.reservations] == [
        ("wide", 100.0, {}), ("b", 30.0, {}), ("c", 150.0, {})]
    assert messages(r) == {
        "wide": "no room now for the task: needs 2 cpu; largest free on any ready node: 1",
        "gpu": "asks for a resource no ready node offers",
        "mars": "0/2 nodes can take it: label mismatch: zone=mars (2)",
        "b": "reserved to start at 30",
        "c": "reserved to start at 150"}
    assert r.unplaced["gpu"] == Failure.of(Reason(
        BACKFILL, Code.UNKNOWN_RESOURCE, Kind.NEVER, "asks for a resource no ready node offers"))
    assert r.unplaced["mars"].kind is Kind.NEVER


def test_conservative_reservation_depth() -> None:
    deep = busy(BACKFILL, "waiting beyond the reservation depth; no room now")
    r = conservative_run(1)
    assert placed(r) == [("a", ("n0",), True)]
    assert [(v.job_id, v.start) for v in r.reservations] == [("wide", 100.0)]
    assert (r.unplaced["b"], r.unplaced["c"]) == (deep, deep)
    r = conservative_run(2)
    assert [(v.job_id, v.start) for v in r.reservations] == [("wide", 100.0), ("b", 30.0)]
    assert r.unplaced["c"] == deep
    assert conservative_run(0).reservations == ()


def test_conservative_first_job_is_not_backfilled_and_the_plan_counts_it() -> None:
    state = procs(3)
    jobs = [job("first", {"cpu": C}, count=2, runtime_estimate=100, submit_time=1),
            job("wide", {"cpu": C}, count=3, runtime_estimate=10, submit_time=2),
            job("one", {"cpu": C}, runtime_estimate=10, submit_time=3)]
    r = schedule_cycle(state, jobs, 0.0, SchedulerConfig(backfill="conservative"))
    assert [(p.job_id, p.backfilled) for p in r.placements] == [
        ("first", False), ("one", True)]
    assert [(v.job_id, v.start) for v in r.reservations] == [("wide", 100.0)]


def test_deadline_risks_at_their_edges() -> None:
    state = ClusterState([Node("n", {"cpu": C}), Node("m", {"cpu": C})])
    run_for(state, "hog", ["n"], 0.0, 100.0)
    jobs = [job("nodl", {"cpu": 5 * C}, runtime_estimate=1e9, submit_time=0),
            job("now-edge", {"cpu": C}, runtime_estimate=50, deadline=60, submit_time=1),
            job("res-edge", {"cpu": C}, runtime_estimate=50, deadline=110, submit_time=2),
            job("res-late", {"cpu": C}, runtime_estimate=50, deadline=149, submit_time=3),
            job("res-lost", {"cpu": C}, runtime_estimate=50, deadline=59, submit_time=4),
            job("noest", {"cpu": 5 * C}, deadline=9, submit_time=5),
            job("noest-edge", {"cpu": 5 * C}, deadline=10, submit_time=6),
            job("res-cert-edge", {"cpu": C}, runtime_estimate=50, deadline=60, submit_time=7)]
    r = schedule_cycle(state, jobs, 10.0, SchedulerConfig(backfill="conservative"))
    assert [p.job_id for p in r.placements] == ["now-edge"]
    assert [(v.job_id, v.start) for v in r.reservations] == [
        ("res-edge", 60.0), ("res-late", 100.0), ("res-lost", 110.0), ("res-cert-edge", 150.0)]
    assert r.deadline_risks == (
        DeadlineRisk("res-late", 149, 150.0, False),
        DeadlineRisk("res-lost", 59, 160.0, True),
        DeadlineRisk("noest", 9, 10.0, True),
        DeadlineRisk("res-cert-edge", 60, 200.0, False))
    state = ClusterState([Node("n", {"cpu": C})])
    r = schedule_cycle(state, [job("started", {"cpu": C}, runtime_estimate=50, deadline=59)],
                       10.0, SchedulerConfig())
    assert r.deadline_risks == (DeadlineRisk("started", 59, 60.0, True),)


def test_easy_a_job_that_ends_first_goes_on_the_head_node_before_a_tighter_one() -> None:
    state = ClusterState([Node("big", {"cpu": 4 * C}), Node("small", {"cpu": 2 * C})])
    state.start(job("hog", {"cpu": C}), [TaskPlacement("big", {"cpu": C})], 0.0, 100.0)
    state.start(job("s", {"cpu": C}), [TaskPlacement("small", {"cpu": C})], 0.0, 1000.0)
    jobs = [job("head", {"cpu": 4 * C}, runtime_estimate=50, submit_time=1),
            job("short", {"cpu": C}, runtime_estimate=10, submit_time=2)]
    r = schedule_cycle(state, jobs, 20.0, SchedulerConfig())
    assert placed(r) == [("short", ("big",), True)]


def test_conservative_plans_a_fragmented_job_for_its_run_time_only() -> None:
    # "big" holds everything from 200 to 210; "wide" fits the sums now but
    # not the nodes, and is planned at 100, for its 50 s (not for ever).
    state = ClusterState([Node(f"n{i}", {"cpu": 2 * C}) for i in range(2)])
    run_for(state, "r0", ["n0"], 0.0, 100.0)
    run_for(state, "r1", ["n1"], 0.0, 200.0)
    jobs = [job("big", {"cpu": 4 * C}, runtime_estimate=10, submit_time=0),
            job("wide", {"cpu": 2 * C}, runtime_estimate=50, submit_time=1)]
    r = schedule_cycle(state, jobs, 20.0, SchedulerConfig(backfill="conservative"))
    assert [(v.job_id, v.start) for v in r.reservations] == [("big", 200.0), ("wide", 100.0)]
    assert r.unplaced["big"] == busy(BACKFILL, "reserved to start at 200")


def test_a_job_no_eviction_would_make_room_for_waits() -> None:
    # Evicting v (1 of 2) is not enough beside the pinned job: no plan.
    state = ClusterState([Node("a", {"cpu": 2 * C})])
    low(state, "v", "a", C, 1)
    state.start(job("pinned", {"cpu": C}, priority=1), [TaskPlacement("a", {"cpu": C})], 0.0)
    jobs = [job("j", {"cpu": 2 * C}, priority=10, submit_time=0),
            job("k", {"cpu": C}, priority=10, submit_time=1)]
    r = schedule_cycle(state, jobs, 10.0, SchedulerConfig(strategy="priority", backfill="none"))
    assert r.preemptions == () and r.placements == ()
    assert messages(r) == {"j": "not enough cpu free on ready nodes now (0 in all)",
                           "k": "waiting behind j (no backfilling)"}


def test_a_start_is_registered_as_running_with_its_plan() -> None:
    state = procs(1)
    r = schedule_cycle(state, [job("x", {"cpu": C})], 5.0, SchedulerConfig(default_estimate=100.0))
    (pl,) = r.placements
    assert (pl.start, pl.estimate) == (5.0, 100.0)
    rj = state.running["x"]
    assert (rj.start, rj.tasks, rj.estimate) == (5.0, pl.tasks, 100.0)


def test_the_orders_see_the_state_and_the_estimates() -> None:
    state = procs(4)
    state.start(job("a0", {"cpu": C}, queue="a"), [TaskPlacement("n0", {"cpu": C})], 0.0)
    jobs = [job("a1", {"cpu": C}, queue="a", submit_time=0),
            job("b1", {"cpu": C}, queue="b", submit_time=1)]
    r = schedule_cycle(state, jobs, 5.0, SchedulerConfig(strategy="fairshare"))
    assert [p.job_id for p in r.placements] == ["b1", "a1"]
    jobs = [job("long", {"cpu": C}, runtime_estimate=100, submit_time=0),
            job("short", {"cpu": C}, runtime_estimate=10, submit_time=1)]
    r = schedule_cycle(procs(2), jobs, 5.0, SchedulerConfig(strategy="sjf"))
    assert [p.job_id for p in r.placements] == ["short", "long"]
    r = schedule_cycle(procs(2), jobs, 5.0, SchedulerConfig(strategy="adaptive"))
    assert [p.job_id for p in r.placements] == ["short", "long"]


def test_only_a_learning_strategy_corrects_running_estimates() -> None:
    for name, corrected in (("fifo", False), ("adaptive", True)):
        state = procs(2)
        run_for(state, "r", ["n0"], 0.0, 10.0)  # past its estimate at 50
        schedule_cycle(state, [], 50.0, SchedulerConfig(strategy=name), history=RuntimeHistory())
        assert (state.running["r"].estimate != 10.0) is corrected


def test_no_backfill_names_its_stage() -> None:
    state = procs(1)
    run_for(state, "r", ["n0"], 0.0, 100.0)
    jobs = [job("j", {"cpu": C}, submit_time=0), job("k", {"cpu": C}, submit_time=1)]
    r = schedule_cycle(state, jobs, 10.0, SchedulerConfig(backfill="none"))
    assert r.unplaced["k"] == busy(BACKFILL, "waiting behind j (no backfilling)")


def test_a_shape_whose_hash_another_shares_is_not_answered_by_its_failure() -> None:
    # hash(1) == hash(2**61) (ints hash modulo 2**61 - 1): the two jobs'
    # shapes share a hash, and the failure of one must not stand for the other.
    state = ClusterState([Node("n", {"cpu": 8})])
    huge, small = job("huge", {"cpu": 2**61}), job("small", {"cpu": 1})
    assert huge.shape_hash == small.shape_hash and huge.shape != small.shape
    result = schedule_cycle(state, [huge, small], 0.0, SchedulerConfig())
    assert [(p.job_id, p.tasks) for p in result.placements] == [
        ("small", (TaskPlacement("n", {"cpu": 1}),))]
    assert list(result.unplaced) == ["huge"]


def test_a_job_that_must_run_beside_another_is_tried_again_once_that_one_starts() -> None:
    # a fails (no db runs yet); db starts; a2, of a's shape, then fits beside it.
    near = (Affinity(parse_selector("name=db"), target="job", required=True),)
    jobs = [job("a", {"cpu": 1}, affinity=near, submit_time=1),
            job("db", {"cpu": 1}, name="db", submit_time=2),
            job("a2", {"cpu": 1}, affinity=near, submit_time=3)]
    state = ClusterState([Node("n", {"cpu": 8})])
    result = schedule_cycle(state, jobs, 0.0, SchedulerConfig(backfill="conservative"))
    assert [p.job_id for p in result.placements] == ["db", "a2"]
    assert list(result.unplaced) == ["a"]
