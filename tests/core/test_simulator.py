"""The replay engine on small traces with hand-checked results."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

from apportion.core.model import Node
from apportion.core.scheduling import SchedulerConfig, job
from apportion.core.simulator import SimConfig, SimJob, bounded_slowdown, percentile, simulate
from apportion.traces import read_trace

SWF = """\
; MaxNodes: 4
; MaxProcs: 4
1 0 5 100 3 -1 -1 3 100 -1 1 1 1 -1 -1 -1 -1 -1
2 10 -1 50 4 -1 -1 4 60 -1 1 2 2 -1 -1 -1 -1 -1
3 20 -1 30 1 -1 -1 1 30 -1 1 3 3 -1 -1 -1 -1 -1
4 25 -1 0 1 -1 -1 1 30 -1 1 3 3 -1 -1 -1 -1 -1
5 30 -1 10 8 -1 -1 8 30 -1 1 3 3 -1 -1 -1 -1 -1
6 40 -1 20 -1 -1 -1 -1 30 -1 1 3 3 -1 -1 -1 -1 -1
7 50 -1 10 1 -1 -1 1 -1 -1 1 3 3 -1 -1 -1 -1 -1
"""

KTH = Path(__file__).parents[2] / "../shared/data/traces/KTH-SP2-1996-2.1-cln.swf.gz"


def replay(tmp_path: Path, backfill: str, strategy: str = "fifo") -> dict[str, object]:
    path = tmp_path / "t.swf"
    path.write_text(SWF)
    trace = read_trace(path)
    result = simulate(trace.jobs, trace.nodes,
                      SimConfig(SchedulerConfig(strategy=strategy, backfill=backfill)))
    starts = {r.id: r.start for r in result.records}
    return {"starts": starts, **result.metrics}


def test_fifo_without_backfill(tmp_path: Path) -> None:
    m = replay(tmp_path, "none")
    assert m["starts"] == {"1": 0.0, "2": 100.0, "3": 150.0, "7": 150.0}
    assert m["jobs"] == 4
    assert m["mean_wait_s"] == 80.0
    assert m["median_wait_s"] == 90.0
    assert m["max_wait_s"] == 130.0
    assert m["mean_bounded_slowdown"] == pytest.approx((1 + 2.8 + 160 / 30 + 11) / 4)
    assert m["makespan_s"] == 180.0
    assert m["utilization"] == pytest.approx(540 / (180 * 4))
    assert m["real_mean_wait_s"] == 5.0
    assert m["real_mean_bounded_slowdown"] == 1.05


def test_easy_backfills_short_jobs_before_the_reservation(tmp_path: Path) -> None:
    m = replay(tmp_path, "easy")
    assert m["starts"] == {"1": 0.0, "2": 100.0, "3": 20.0, "7": 50.0}
    assert m["mean_wait_s"] == 22.5
    assert m["mean_bounded_slowdown"] == pytest.approx(1.45)
    assert m["utilization"] == pytest.approx(0.9)


def test_conservative_matches_easy_here(tmp_path: Path) -> None:
    assert replay(tmp_path, "conservative")["starts"] == {"1": 0.0, "2": 100.0, "3": 20.0,
                                                         "7": 50.0}


def test_preemption_requeues_the_victim_and_counts_lost_work() -> None:
    nodes = [Node("n", {"cpu": 1000})]
    jobs = [
        SimJob(job("a", {"cpu": 1000}, priority=0, preemptible=True, runtime_estimate=100,
                   submit_time=0.0), 100.0),
        SimJob(job("b", {"cpu": 1000}, priority=5, runtime_estimate=10, submit_time=10.0), 10.0),
    ]
    r = simulate(jobs, nodes, SimConfig(SchedulerConfig(strategy="priority")))
    assert {x.id: (x.start, x.end, x.wait, x.preempted) for x in r.records} == {
        "b": (10.0, 20.0, 0.0, 0), "a": (20.0, 120.0, 20.0, 1)}
    assert r.metrics["preemptions"] == 1
    assert r.metrics["utilization"] == pytest.approx(1.0)


def test_a_job_started_in_a_cycle_is_not_preempted_in_the_same_cycle() -> None:
    # This replay raised "job new is not running": the cycle started "new"
    # and evicted it for "urgent" in one result.
    nodes = [Node("n1", {"cpu": 1000}), Node("n2", {"cpu": 1000})]
    jobs = [
        SimJob(job("old", {"cpu": 1000}, preemptible=True, submit_time=0.0), 100.0),
        SimJob(job("new", {"cpu": 1000}, preemptible=True, submit_time=10.0), 100.0),
        SimJob(job("urgent", {"cpu": 1000}, priority=5, submit_time=10.0), 10.0),
    ]
    r = simulate(jobs, nodes, SimConfig(SchedulerConfig(strategy="fifo", backfill="none")))
    assert {x.id: (x.start, x.end, x.preempted) for x in r.records} == {
        "new": (10.0, 110.0, 0), "urgent": (10.0, 20.0, 0), "old": (20.0, 120.0, 1)}
    assert r.metrics["preemptions"] == 1


def test_deadline_misses_and_sla_reports() -> None:
    nodes = [Node("n", {"cpu": 1000})]
    jobs = [SimJob(job("x", {"cpu": 1000}, runtime_estimate=50, submit_time=0.0), 50.0),
            SimJob(job("y", {"cpu": 1000}, runtime_estimate=10, deadline=30.0,
                       submit_time=1.0), 10.0)]
    r = simulate(jobs, nodes, SimConfig(SchedulerConfig(strategy="sla")))
    assert r.metrics["deadline_misses"] == 1
    assert [x.id for x in r.records if x.deadline_missed] == ["y"]


def test_a_job_that_never_fits_is_reported_not_run() -> None:
    nodes = [Node("n", {"cpu": 1000})]
    jobs = [SimJob(job("big", {"cpu": 2000}, submit_time=0.0), 5.0),
            SimJob(job("ok", {"cpu": 1000}, submit_time=1.0), 5.0)]
    r = simulate(jobs, nodes)
    assert r.unscheduled == ("big",)
    assert r.metrics["unscheduled"] == 1
    assert [x.id for x in r.records] == ["ok"]


def test_metric_helpers() -> None:
    assert bounded_slowdown(0, 1) == 1.0
    assert bounded_slowdown(90, 5) == 9.5
    assert percentile([1, 2, 3, 4], 50) == 2
    assert percentile([1, 2, 3, 4], 95) == 4
    assert percentile([], 95) == 0.0


def test_replay_is_deterministic_and_easy_beats_none_on_a_real_log_slice() -> None:
    if not KTH.exists():
        pytest.skip(f"real traces not found at {KTH.resolve()}")
    trace = read_trace(KTH, limit=1500)
    runs: dict[str, list[Mapping[str, float | int | None]]] = {}
    for backfill in ("none", "easy", "easy"):
        r = simulate(trace.jobs, trace.nodes, SimConfig(SchedulerConfig(backfill=backfill)))
        runs.setdefault(backfill, []).append(r.metrics)
    assert runs["easy"][0] == runs["easy"][1]
    easy, none = runs["easy"][0]["mean_bounded_slowdown"], runs["none"][0]["mean_bounded_slowdown"]
    assert easy is not None and none is not None and easy < none


OVERRUN = """\
; MaxNodes: 4
; MaxProcs: 4
1 0 -1 100 3 -1 -1 3 50 -1 1 -1 -1 -1 -1 -1 -1 -1
2 10 -1 10 4 -1 -1 4 10 -1 1 -1 -1 -1 -1 -1 -1 -1
3 60 -1 5 1 -1 -1 1 5 -1 1 -1 -1 -1 -1 -1 -1 -1
4 70 -1 5 1 -1 -1 1 5 -1 1 -1 -1 -1 -1 -1 -1 -1
"""


def test_estimate_error_and_reservation_moves(tmp_path: Path) -> None:
    # Job 1 asks for 50 s and runs 100 s. Under FIFO the head (job 2) is
    # reserved for 50, then "now" at 60 and at 70: two moves. Adaptive
    # raises job 1's estimate to 50 + 60 s when it passes 50, so the head's
    # reservation moves once, to 110, and stays there.
    path = tmp_path / "t.swf"
    path.write_text(OVERRUN)
    trace = read_trace(path)
    out = {}
    for strategy in ("fifo", "adaptive"):
        result = simulate(trace.jobs, trace.nodes, SimConfig(SchedulerConfig(strategy=strategy)))
        out[strategy] = (result.metrics["estimate_mae_s"], result.metrics["reservation_moves"])
    assert out == {"fifo": (12.5, 2), "adaptive": (12.5, 1)}


def test_learn_only_hides_stand_in_estimates_from_learning_strategies(tmp_path: Path) -> None:
    path = tmp_path / "t.swf"
    path.write_text(SWF)
    trace = read_trace(path)  # job 7 has no requested time: its run time stands in
    config = SchedulerConfig(strategy="adaptive", backfill="none")
    seen = simulate(trace.jobs, trace.nodes, SimConfig(config))
    hidden = simulate(trace.jobs, trace.nodes, SimConfig(config, learn_only=True))
    assert seen.metrics["estimate_mae_s"] == 2.5
    # Nothing learned yet when job 7 starts: it runs with no estimate at all.
    assert hidden.metrics["estimate_mae_s"] == pytest.approx(10 / 3)
