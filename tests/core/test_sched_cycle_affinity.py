"""A job that must run beside another job waits for that job without
holding up the queue: with EASY or no backfilling it became the head, and a
partner queued behind it could never start."""

from __future__ import annotations

import pytest

from apportion.core.labels import parse_selector
from apportion.core.model import Node
from apportion.core.reasons import Code, Failure, Kind, Reason
from apportion.core.scheduling import (
    Affinity,
    ClusterState,
    SchedulerConfig,
    TaskPlacement,
    job,
    schedule_cycle,
)

NEAR_DB = (Affinity(parse_selector("name=db"), target="job", required=True),)


@pytest.mark.parametrize("backfill", ["easy", "none", "conservative"])
def test_a_job_queued_before_the_job_it_must_run_beside_lets_that_one_start(
        backfill: str) -> None:
    state = ClusterState([Node("n", {"cpu": 8000})])
    a = job("a", {"cpu": 1000}, affinity=NEAR_DB, submit_time=1)
    db = job("db", {"cpu": 1000}, name="db", submit_time=2)
    first = schedule_cycle(state, [a, db], 0.0, SchedulerConfig(backfill=backfill))
    assert [p.job_id for p in first.placements] == ["db"]
    second = schedule_cycle(state, [a], 1.0, SchedulerConfig(backfill=backfill))
    assert [(p.job_id, p.tasks) for p in second.placements] == [
        ("a", (TaskPlacement("n", {"cpu": 1000}),))]


def test_the_wait_names_the_job_it_needs() -> None:
    state = ClusterState([Node("n", {"cpu": 8000})])
    a = job("a", {"cpu": 1000}, affinity=NEAR_DB, submit_time=1)
    result = schedule_cycle(state, [a], 0.0, SchedulerConfig())
    assert result.unplaced == {"a": Failure.of(Reason(
        "JobAffinity", Code.AFFINITY, Kind.BUSY,
        "waiting for a job with name=db to run (required affinity)"))}


def test_a_job_whose_partner_runs_on_a_full_node_still_holds_the_queue() -> None:
    # db runs, so a waits for room beside it: capacity, as any head does.
    state = ClusterState([Node("n", {"cpu": 1000}), Node("m", {"cpu": 4000})])
    state.start(job("db", {"cpu": 1000}, name="db"), [TaskPlacement("n", {"cpu": 1000})], 0.0)
    jobs = [job("a", {"cpu": 1000}, affinity=NEAR_DB, submit_time=1),
            job("c", {"cpu": 1000}, submit_time=2)]
    result = schedule_cycle(state, jobs, 1.0, SchedulerConfig(backfill="none"))
    assert result.placements == ()
    assert result.unplaced["c"].message == "waiting behind a (no backfilling)"


def test_a_rule_that_draws_and_the_same_rule_that_keeps_away_answer_apart() -> None:
    # Both jobs' shapes once held the rule alike, so the verdict made for the
    # job drawn to zone=a answered for the one kept from it.
    state = ClusterState([Node("a1", {"cpu": 4000}, labels={"zone": "a"}),
                          Node("b1", {"cpu": 4000}, labels={"zone": "b"})])
    zone_a = Affinity(parse_selector("zone=a"), required=True)
    drawn = job("drawn", {"cpu": 1000}, affinity=(zone_a,), submit_time=1)
    kept = job("kept", {"cpu": 1000}, anti_affinity=(zone_a,), submit_time=2)
    result = schedule_cycle(state, [drawn, kept], 0.0, SchedulerConfig())
    assert [(p.job_id, p.tasks[0].node) for p in result.placements] == [
        ("drawn", "a1"), ("kept", "b1")]
