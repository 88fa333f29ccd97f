"""Times in answers: ``iso`` writes what ``datetime`` wrote before it
remembered whole seconds (9ce6a3c), microseconds rounded half to even."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apportion.server.schemas import iso


def _datetime_iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


@settings(max_examples=2000, deadline=None)
@given(st.floats(min_value=-2e9, max_value=4e9, allow_nan=False)
       | st.integers(0, 4 * 10**15).map(lambda us: us / 1e6)
       | st.integers(0, 4 * 10**9).map(lambda s: s + 0.5e-6))
def test_a_time_is_written_as_datetime_writes_it(ts: float) -> None:
    assert iso(ts) == _datetime_iso(ts)


@pytest.mark.parametrize("ts", [0.0, -0.0, 1.0, 0.9999995, 0.9999994, 1765068412.473368,
                                1765068412.0000005, 1765068412.9999996, -1.5, -0.0000004,
                                1e-7, 253402300799.999])
def test_edges_of_the_rounding(ts: float) -> None:
    assert iso(ts) == _datetime_iso(ts)


def test_none_and_literal() -> None:
    assert iso(None) is None
    assert iso(1765068412.473368) == "2025-12-07T00:46:52.473368Z"
    assert iso(1765068412.0) == "2025-12-07T00:46:52Z"
