"""A job as submitted and as the core sees it (``service/job_specs.py``):
durations and times in the spellings users write, the task shorthands, a
command that asks for a node an agent runs, and queues as given (text) and
as stored (base units)."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apportion.core.labels import LabelRequirement
from apportion.core.records import QueueRow
from apportion.core.scheduling import Queue, TaskSpec
from apportion.exceptions import InvalidInput
from apportion.service.job_specs import (
    as_checked,
    job_from_spec,
    parse_duration,
    parse_time,
    queue_from_row,
    queue_of_stored,
    tasks_of,
)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        (90, 90.0),
        (1.5, 1.5),
        ("90s", 90.0),
        ("10m", 600.0),
        ("2h", 7200.0),
        ("1.5d", 129600.0),
        ("250ms", 0.25),
        (" 30 ", 30.0),
    ],
)
def test_durations_in_the_spellings_users_write(value: object, seconds: float | None) -> None:
    assert parse_duration(value, "runtime_estimate") == seconds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, "runtime_estimate: expected seconds or a duration like '10m'"),
        ("soon", "runtime_estimate: 'soon' is not a duration"),
        (0, "runtime_estimate: must be more than 0 and at most 10 years"),
        ("11000d", "runtime_estimate: must be more than 0 and at most 10 years"),
    ],
)
def test_a_bad_duration_names_its_field(value: object, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_duration(value, "runtime_estimate")


def test_times_are_epoch_seconds_or_iso_8601() -> None:
    assert parse_time(1_700_000_000, "deadline") == 1_700_000_000.0
    assert parse_time("2023-11-14T22:13:20Z", "deadline") == 1_700_000_000.0
    assert parse_time("2023-11-14T23:13:20+01:00", "deadline") == 1_700_000_000.0
    with pytest.raises(InvalidInput, match="deadline: 'tomorrow' is not a time"):
        parse_time("tomorrow", "deadline")


def test_epoch_seconds_as_text_are_a_time_within_the_apis_bounds() -> None:
    # As `apportion submit --deadline 1700000000` sends them.
    assert parse_time("1700000000", "deadline") == 1_700_000_000.0
    assert parse_time("1700000000.5", "deadline") == 1_700_000_000.5
    for bad in ("-5", "nan", "inf", "2e11"):
        with pytest.raises(InvalidInput, match=f"deadline: '{bad}' is not epoch seconds "
                                               "between 0 and 1e[+]11"):
            parse_time(bad, "deadline")


def test_a_time_without_an_offset_is_utc_whatever_the_servers_zone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "EST5EDT,M3.2.0,M11.1.0")  # a POSIX rule: no tz database needed
    time.tzset()
    try:
        assert parse_time("2023-11-14T22:13:20", "deadline") == 1_700_000_000.0
    finally:
        monkeypatch.undo()
        time.tzset()


def test_the_task_shorthands() -> None:
    assert tasks_of({"resources": {"cpu": "2"}, "count": 3}) == (TaskSpec({"cpu": 2000}, 3),)
    assert tasks_of({"resources": {"cpu": "1"}, "array": 4}) == (TaskSpec({"cpu": 1000}, 4),)
    assert tasks_of(
        {"tasks": [{"resources": {"gpu": 1}}, {"resources": {"cpu": "500m"}, "count": 2}]}
    ) == (TaskSpec({"gpu": 1}, 1), TaskSpec({"cpu": 500}, 2))
    with pytest.raises(InvalidInput, match="array: a job array is `resources` and `array: N`"):
        tasks_of({"resources": {"cpu": "1"}, "array": 4, "gang": True})
    with pytest.raises(InvalidInput, match=r"tasks\[0\]\.resources: ask for at least one"):
        tasks_of({"resources": {}})
    with pytest.raises(InvalidInput, match="tasks: at most 10000 tasks per job"):
        tasks_of({"resources": {"cpu": "1"}, "count": 10_001})


def test_a_command_asks_for_a_node_an_agent_runs() -> None:
    spec = {
        "command": ["true"],
        "resources": {"cpu": "1"},
        "constraints": ["zone=a"],
        "priority": 5,
        "queue": "team-a",
        "runtime_estimate": "1h",
    }
    job = job_from_spec(spec, job_id="j-1", submit_time=10.0, owner="alice")
    assert job.constraints.labels == (
        LabelRequirement("zone", "=", ("a",)),
        LabelRequirement("apportion.io/agent", "=", ("true",)),
    )
    # Whether it could ever run is checked without: an agent may join later.
    anywhere = job_from_spec(spec, job_id="j-1", submit_time=10.0, owner="alice", needs_agent=False)
    assert anywhere.constraints.labels == (LabelRequirement("zone", "=", ("a",)),)
    assert (job.command, job.priority, job.queue, job.runtime_estimate, job.user) == (
        ("true",),
        5,
        "team-a",
        3600.0,
        "alice",
    )
    lease = job_from_spec({"resources": {"cpu": "1"}}, job_id="j-3", submit_time=0.0, owner=None)
    assert (lease.command, lease.queue, lease.constraints.labels) == (None, "default", ())


def test_a_queue_as_given_and_as_stored() -> None:
    given = queue_from_row("team-a", {"cpu": "8", "memory": "16Gi"}, 2.0, None, 10)
    assert given == Queue("team-a", {"cpu": 8000, "memory": 16 << 30}, 2.0, None, 10)
    stored = QueueRow("team-a", dict(given.quota), 2.0, None, 10, 0.0, 0.0)
    assert queue_of_stored(stored) == given  # base units, not read as text again


@given(command=st.sampled_from([None, ["true"], ["sh", "-c", "exit 0"]]),
       constraints=st.lists(st.sampled_from(
           ["facility=texas-1", "!spot", "type in (gpu,cpu)", "gpu.memory>=40Gi",
            "apportion.io/agent=true", "zone!=b"]), max_size=3),
       resources=st.sampled_from([{"cpu": "1"}, {"cpu": "2", "gpu": 1}, {"memory": "1Gi"}]))
def test_a_checked_job_is_the_one_built_without_the_agent_label(
        command: list[str] | None, constraints: list[str], resources: dict[str, object]) -> None:
    """A submission builds its job once and checks it without the agent
    label: exactly what building it again without the label gives."""
    spec = {"resources": resources, "constraints": constraints,
            **({"command": command} if command else {})}
    kept = job_from_spec(spec, job_id="j1", submit_time=5.0, owner="alice")
    plain = job_from_spec(spec, job_id="j1", submit_time=5.0, owner="alice", needs_agent=False)
    checked = as_checked(kept, spec)
    assert checked == plain
    assert (checked.shape, checked.shape_hash, checked.constraints.by_family) == (
        plain.shape, plain.shape_hash, plain.constraints.by_family)
