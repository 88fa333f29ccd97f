"""Webhook retry delays and the alert payload."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apportion.core.alerts import AlertBook, AlertChange, AlertRule, Condition
from apportion.core.health import Severity
from apportion.core.webhook import (
    alert_payload,
    backoff_delays,
    delivery_id,
    encode_payload,
)
from apportion.exceptions import InvalidInput

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def test_backoff_is_seeded_exponential_with_equal_jitter() -> None:
    assert backoff_delays(5, 1.0, 10.0, random.Random(42)) == [
        0.8197133992289418,
        1.025010755222667,
        2.5500586367382385,
        4.8928429525952915,
        8.682356070820063,
    ]
    assert backoff_delays(0, 1.0, 10.0, random.Random(1)) == []


@given(st.integers(0, 2000), st.floats(0.01, 10), st.floats(1, 600), st.integers())
def test_each_delay_is_between_half_and_all_of_its_ceiling(
    attempts: int, base: float, extra: float, seed: int
) -> None:
    cap = base + extra
    delays = backoff_delays(attempts, base, cap, random.Random(seed))
    assert len(delays) == attempts
    for i, delay in enumerate(delays):
        ceiling = min(cap, base * 2.0 ** min(i, 60))
        assert ceiling / 2 <= delay <= ceiling


@pytest.mark.parametrize(
    ("attempts", "base", "cap", "key"),
    [(-1, 1.0, 2.0, "attempts"), (3, 0.0, 2.0, "base_s"), (3, 2.0, 1.0, "cap_s")],
)
def test_backoff_arguments_are_checked(attempts: int, base: float, cap: float, key: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        backoff_delays(attempts, base, cap, random.Random(0))
    assert caught.value.data == {"field": key}


def _changes() -> list[AlertChange]:
    hot = Condition(
        AlertRule.NODE_HEALTH, {"node": "gpu-7"}, Severity.WARNING, "degraded", 85.0, 80.0
    )
    hotter = Condition(
        AlertRule.NODE_HEALTH, {"node": "gpu-7"}, Severity.CRITICAL, "unhealthy", 95.0, 90.0
    )
    book, raised = AlertBook().evaluate([hot], T0)
    book, updated = book.evaluate([hotter], T0 + 10)
    _, resolved = book.evaluate([], T0 + 20.5)
    return [*raised, *updated, *resolved]


def test_payload_of_a_raise() -> None:
    assert alert_payload(_changes()[0]) == {
        "version": 1,
        "id": "308f454c50437ceb0f685e2602d79d9c",
        "source": "apportion",
        "event": "alert.raised",
        "at": "2023-11-14T22:13:20Z",
        "alert": {
            "fingerprint": "e8fc81fe5c50d6ed",
            "rule": "node_health",
            "status": "firing",
            "severity": "warning",
            "previous_severity": None,
            "labels": {"node": "gpu-7"},
            "message": "degraded",
            "value": 85.0,
            "threshold": 80.0,
            "started_at": "2023-11-14T22:13:20Z",
            "resolved_at": None,
        },
    }


def test_payloads_of_an_escalation_and_a_resolve() -> None:
    _, updated, resolved = (alert_payload(c) for c in _changes())
    assert (updated["event"], updated["alert"]["severity"]) == ("alert.updated", "critical")
    assert updated["alert"]["previous_severity"] == "warning"
    assert resolved["event"] == "alert.resolved"
    assert resolved["alert"]["status"] == "resolved"
    assert resolved["alert"]["resolved_at"] == "2023-11-14T22:13:40.500000Z"
    assert resolved["alert"]["started_at"] == "2023-11-14T22:13:20Z"
    assert len({p["id"] for p in (updated, resolved)}) == 2


def test_delivery_id_is_stable_per_change() -> None:
    first, again = _changes()[0], _changes()[0]
    assert delivery_id(first) == delivery_id(again) == "308f454c50437ceb0f685e2602d79d9c"


def test_encoding_is_canonical_and_refuses_nan() -> None:
    payload = {"b": 1, "a": {"z": "ü", "y": None}}
    assert encode_payload(payload) == '{"a":{"y":null,"z":"ü"},"b":1}'.encode()
    with pytest.raises(ValueError):
        encode_payload({"value": float("nan")})


def test_non_finite_alert_values_become_null() -> None:
    odd = Condition(AlertRule.QUEUE_WAIT, {"queue": "q"}, Severity.WARNING, "m", float("inf"))
    _, changes = AlertBook().evaluate([odd], T0)
    payload = alert_payload(changes[0])
    assert payload["alert"]["value"] is None
    encode_payload(payload)  # valid JSON
