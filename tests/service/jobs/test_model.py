"""A job's rules (``service/jobs/model.py``), pure: its run policy, what an
exit report means, and what the job becomes when one of its tasks ends."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from apportion.core.records import JobRow, TaskRow
from apportion.core.scheduling import Job
from apportion.exceptions import InvalidInput
from apportion.service.job_specs import job_from_spec
from apportion.service.jobs.model import (
    RunPolicy,
    TaskReport,
    after_end,
    outcome,
    unit_id_of,
    unit_job_id,
)

NOW = 1000.0


def _job(spec: dict[str, Any]) -> tuple[Job, JobRow]:
    job = job_from_spec(spec, job_id="j-1", submit_time=0.0, owner="alice")
    row = JobRow("j-1", None, "alice", "default", 0, "running", spec, 0.0, 1.0, None, None,
                 None, 1, 0, tasks_active=job.task_count)
    return job, row


def _task(index: int, state: str, *, exit_code: int | None = None, reason: str | None = None,
          stop_state: str | None = None) -> TaskRow:
    return TaskRow(f"t-{index}", "j-1", index, 1, "n1", f"a-{index}", state, exit_code, reason,
                   1.0, 2.0, NOW, stop_state=stop_state)


def test_the_run_policy_defaults_and_its_spellings() -> None:
    assert RunPolicy.of({}) == RunPolicy("never", 0, 1.0, "SIGTERM", 10.0)
    spec = {"restart": {"policy": "on-failure", "backoff": "5s"}, "stop_signal": "int",
            "stop_grace": "30s"}
    assert RunPolicy.of(spec) == RunPolicy("on-failure", 3, 5.0, "SIGINT", 30.0)
    with pytest.raises(InvalidInput, match=r"restart\.policy: use never or on-failure"):
        RunPolicy.of({"restart": {"policy": "always"}})
    with pytest.raises(InvalidInput, match="stop_signal: SIGNOPE is not a signal"):
        RunPolicy.of({"stop_signal": "nope"})


def test_the_backoff_doubles_from_the_first_retry_up_to_five_minutes() -> None:
    policy = RunPolicy(backoff_s=5.0)
    assert [policy.backoff(r) for r in (1, 2, 3, 4)] == [5.0, 10.0, 20.0, 40.0]
    assert policy.backoff(20) == 300.0


@pytest.mark.parametrize(("report", "stop_state", "expected"), [
    (TaskReport("exited", exit_code=0), None, ("succeeded", "exit code 0")),
    (TaskReport("exited", exit_code=3), None, ("failed", "exit code 3")),
    (TaskReport("exited"), None, ("failed", "the process could not be started")),
    (TaskReport("exited", exit_code=0, memory_exceeded=True), None,
     ("failed", "memory limit exceeded")),
    # A process the server asked to stop ends as it was asked to, whatever its code.
    (TaskReport("exited", exit_code=143, signalled=True), "preempted",
     ("preempted", "preempted")),
    (TaskReport("exited", exit_code=143, signalled=True), None, ("failed", "exit code 143")),
    (TaskReport("exited", lost=True), None,
     ("lost", "stopped by its agent, cut off from the server")),
])
def test_what_an_exit_report_means(report: TaskReport, stop_state: str | None,
                                   expected: tuple[str, str]) -> None:
    assert outcome(_task(0, "running", stop_state=stop_state), report) == expected


def test_units_a_gang_is_one_and_other_tasks_one_each() -> None:
    gang, _ = _job({"resources": {"cpu": "1"}, "count": 3, "gang": True})
    spread, _ = _job({"resources": {"cpu": "1"}, "count": 3})
    assert [unit_id_of(gang, i) for i in range(3)] == ["j-1"] * 3
    assert [unit_id_of(spread, i) for i in range(3)] == ["j-1#0", "j-1#1", "j-1#2"]
    assert unit_job_id("j-1#2") == unit_job_id("j-1") == "j-1"


def test_a_job_succeeds_when_its_last_task_does() -> None:
    job, row = _job({"resources": {"cpu": "1"}, "count": 2})
    first = after_end(job, row, _task(0, "succeeded"), NOW, lambda: [])
    assert (first.finished, first.row.state, first.row.tasks_active,
            first.row.tasks_succeeded) == (False, "running", 1, 1)
    last = after_end(job, first.row, _task(1, "succeeded"), NOW + 5, lambda: [])
    assert (last.finished, last.row.state, last.row.exit_code, last.row.reason,
            last.row.ended_at) == (True, "succeeded", 0, "succeeded", NOW + 5)


def test_a_failed_gang_member_stops_the_others_and_the_gang_retries_after_a_backoff() -> None:
    job, row = _job({"resources": {"cpu": "1"}, "count": 2, "gang": True,
                     "restart": {"policy": "on-failure", "max_retries": 2, "backoff": "4s"}})
    sibling = _task(1, "running")
    change = after_end(job, row, _task(0, "failed", exit_code=2, reason="exit code 2"), NOW,
                       lambda: [sibling])
    assert change.finished is False
    assert change.stop == (sibling,)
    assert (change.stop_state, change.stop_reason) == ("cancelled", "a gang member failed")
    assert (change.row.state, change.row.not_before, change.row.reason,
            change.row.task_failures) == ("pending", NOW + 4.0, "retry 1 of 2 after exit code 2",
                                          1)


def test_past_its_retries_a_job_fails_with_the_tasks_exit_code() -> None:
    job, row = _job({"resources": {"cpu": "1"},
                     "restart": {"policy": "on-failure", "max_retries": 1}})
    row = replace(row, task_failures=1)  # its one retry is spent
    change = after_end(job, row, _task(0, "failed", exit_code=7, reason="exit code 7"), NOW,
                       lambda: [])
    assert (change.finished, change.row.state, change.row.exit_code, change.row.reason,
            change.row.ended_at) == (True, "failed", 7, "exit code 7", NOW)


def test_a_preempted_task_puts_its_job_back_as_preempted() -> None:
    job, row = _job({"resources": {"cpu": "1"}})
    change = after_end(job, row, _task(0, "preempted", reason="preempted by j-2"), NOW,
                       lambda: [])
    assert (change.finished, change.row.state, change.row.reason,
            change.row.preemptions) == (False, "preempted", "preempted by j-2", 1)
