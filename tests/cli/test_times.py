"""How the CLI sends a time the user typed: ``--deadline``."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from apportion.cli.options import with_local_offset


@pytest.fixture
def new_york(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "EST5EDT,M3.2.0,M11.1.0")  # a POSIX rule: no tz database needed
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_a_time_without_an_offset_is_the_users_local_time(new_york: None) -> None:
    assert with_local_offset("2023-11-14T17:13:20") == "2023-11-14T17:13:20-05:00"
    assert with_local_offset("2023-07-01T09:00") == "2023-07-01T09:00:00-04:00"


def test_offsets_epoch_seconds_and_unreadable_text_go_as_typed(new_york: None) -> None:
    assert with_local_offset("2023-11-14T22:13:20Z") == "2023-11-14T22:13:20Z"
    assert with_local_offset("2023-11-14T23:13:20+01:00") == "2023-11-14T23:13:20+01:00"
    assert with_local_offset("1700000000") == "1700000000"
    assert with_local_offset("tomorrow") == "tomorrow"
