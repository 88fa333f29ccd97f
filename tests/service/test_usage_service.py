"""Learned requests (``service/usage_service.py``): the usage records of past
tasks read back per job name and user (a job without an owner is its
queue's), only succeeded and failed runs counted, and ``"auto"`` resources
filled in at submission with the prediction recorded in the spec. Run on
SQLite and PostgreSQL: the records' JSON columns read back differently."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from apportion.core.records import UsageRow
from apportion.exceptions import InvalidInput
from apportion.service.usage_service import UsageService, wants_prediction
from apportion.store.database import create_engine, migrate
from apportion.store.usage_tables import insert_usage

GIB = 1 << 30


@pytest.fixture
def stored_usage(store_url: str) -> Iterator[UsageService]:
    """On each backend: for what reads the records back."""
    engine = create_engine(store_url, sqlite_synchronous="OFF")
    migrate(engine)
    try:
        yield UsageService(engine)
    finally:
        engine.dispose()


@pytest.fixture
def usage(tmp_path: Path) -> Iterator[UsageService]:
    """On SQLite: for what only the service decides."""
    engine = create_engine(f"sqlite:///{tmp_path / 'usage.db'}", sqlite_synchronous="OFF")
    migrate(engine)
    try:
        yield UsageService(engine)
    finally:
        engine.dispose()


def _record(
    service: UsageService,
    task: str,
    owner: str,
    queue: str,
    state: str,
    used: dict[str, int],
    finished_at: float,
) -> None:
    row = UsageRow(
        task,
        "j-" + task,
        "train",
        owner,
        queue,
        "python train.py",
        state,
        {"cpu": 4000},
        used,
        0.0,
        finished_at,
    )
    with service.engine.begin() as conn:
        insert_usage(conn, row)


def _history(service: UsageService) -> None:
    """Six runs of alice's ``train`` (2 cpu-s a second for 60 s, 2 GiB), one
    cancelled run of it that says nothing, one run by queue team-a's job."""
    for i in range(6):
        _record(
            service,
            f"t{i}",
            "alice",
            "default",
            "succeeded",
            {"cpu_seconds": 120, "memory": 2 * GIB, "runtime_s": 60},
            100.0 + i,
        )
    _record(
        service,
        "tc",
        "alice",
        "default",
        "cancelled",
        {"cpu_seconds": 9999, "memory": 64 * GIB, "runtime_s": 6000},
        200.0,
    )
    _record(
        service,
        "tq",
        "",
        "team-a",
        "succeeded",
        {"cpu_seconds": 10, "memory": GIB, "runtime_s": 10},
        300.0,
    )


def test_records_are_read_per_user_and_a_jobs_without_an_owner_are_its_queues(
    stored_usage: UsageService,
) -> None:
    usage = stored_usage
    _history(usage)
    assert usage.count() == 8
    records = usage.records("train", "alice")
    assert [(r.user, r.used["memory"]) for r in records] == [
        ("queue:team-a", GIB),  # newest first; the name matched
        *[("alice", 2 * GIB)] * 6,
    ]  # the cancelled run is not among them
    assert records[1].finished_at == 105.0


def test_a_prediction_comes_from_this_users_past_runs_with_a_margin(usage: UsageService) -> None:
    _history(usage)
    answer = usage.predict("train", "alice")
    assert (answer["tier"], answer["samples"], answer["records"]) == (
        "robust",
        6,
        {"matching": 6, "considered": 7},
    )
    # 10 % over the highest use: 2 GiB -> 2253 MiB, 120 -> 132 cpu-s, 60 -> 66 s.
    assert answer["values"] == {"memory": "2253Mi", "cpu_seconds": "132 cpu-s", "runtime_s": "66s"}
    assert answer["detail"]["memory"]["max_used_before"] == 2 * GIB
    with pytest.raises(InvalidInput, match="name: give the job's name"):
        usage.predict("", "alice")


def test_auto_resources_are_filled_in_and_the_prediction_recorded(usage: UsageService) -> None:
    fresh = usage.fill_auto({"name": "train", "resources": "auto"}, "alice")
    assert fresh["resources"] == {"memory": "1Gi", "cpu": "1"}  # nothing learned: defaults
    assert (fresh["runtime_estimate"], fresh["prediction"]["tier"]) == (3600, "default")

    _history(usage)
    spec = {"name": "train", "resources": {"cpu": "auto", "memory": "auto", "gpu": "1"}}
    assert wants_prediction(spec)
    filled = usage.fill_auto(spec, "alice")
    # 132 cpu-s over 66 s is 2 cpu.
    assert filled["resources"] == {"gpu": "1", "memory": "2253Mi", "cpu": "2"}
    assert filled["runtime_estimate"] == 66
    assert filled["prediction"]["filled"] == {
        "memory": "2253Mi",
        "cpu": "2",
        "runtime_estimate": "66s",
    }
    assert filled["prediction"]["basis"] == {
        "memory": "name+user",
        "cpu_seconds": "name+user",
        "runtime_s": "name+user",
        "gpu_memory": None,
    }  # never measured
    plain = {"name": "train", "resources": {"cpu": "1"}}
    assert not wants_prediction(plain)
    assert usage.fill_auto(plain, "alice") is plain


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"name": "x", "resources": {"gpu": "auto"}},
            r"resources\.gpu: only cpu and memory can be 'auto'",
        ),
        (
            {"name": "x", "resources": "auto", "tasks": [{"resources": {"cpu": "1"}}]},
            "resources: 'auto' applies to the resources shorthand, not to tasks",
        ),
        ({"resources": "auto"}, "name: a job with 'auto' resources needs a name or a command"),
    ],
)
def test_what_cannot_be_predicted_is_refused_by_field(
    usage: UsageService, spec: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        usage.fill_auto(spec, "alice")


def test_a_commands_name_stands_for_a_missing_job_name(usage: UsageService) -> None:
    _history(usage)
    filled = usage.fill_auto(
        {"command": ["/opt/bin/train", "--fast"], "resources": "auto"}, "alice"
    )
    # Another command line, but the job called "train": alice's runs of it count.
    assert (filled["prediction"]["tier"], filled["prediction"]["samples"]) == ("robust", 6)
    assert filled["resources"] == {"memory": "2253Mi", "cpu": "2"}
