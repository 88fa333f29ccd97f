"""Node health rules: thresholds, hysteresis, error counters, lateness, config."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from apportion.core.health import (
    DEFAULT_THRESHOLDS,
    Band,
    ErrorCounter,
    HealthChange,
    HealthReason,
    HealthReport,
    HealthRule,
    HealthThresholds,
    Severity,
    band_level,
    evaluate_health,
    health_change,
    thresholds_from_config,
)
from apportion.core.model import Health
from apportion.exceptions import InvalidInput

T = HealthRule.TEMPERATURE
W = Severity.WARNING
C = Severity.CRITICAL
NOW = 1_000_000.0


def gpu(temp: Any = None, **extra: Any) -> dict[str, Any]:
    return {"gpus": [{"index": 0, "uuid": "GPU-a", "temperature_c": temp, **extra}]}


def check(
    usage: Mapping[str, Any] | None,
    *,
    previous: HealthReport | None = None,
    late_s: float | None = 5.0,
    now: float = NOW,
    failures: Sequence[float] = (),
    thresholds: HealthThresholds = DEFAULT_THRESHOLDS,
) -> HealthReport:
    return evaluate_health(
        usage,
        last_heartbeat_at=None if late_s is None else now - late_s,
        heartbeat_interval_s=10.0,
        now=now,
        recent_failures=failures,
        previous_error_counts=previous.error_counts if previous else None,
        previous_reasons=previous.reasons if previous else (),
        thresholds=thresholds,
    )


def run(usages: Sequence[Mapping[str, Any]]) -> list[HealthReport]:
    reports: list[HealthReport] = []
    for usage in usages:
        reports.append(check(usage, previous=reports[-1] if reports else None))
    return reports


# --------------------------------------------------------------------------- temperature


def test_node_made_hot_goes_degraded_unhealthy_and_back() -> None:
    reports = run([gpu(70), gpu(85), gpu(95), gpu(85), gpu(70)])
    assert [r.status for r in reports] == [
        Health.HEALTHY,
        Health.DEGRADED,
        Health.UNHEALTHY,
        Health.DEGRADED,  # 85 is at the critical clear level (90 - 5), so critical clears
        Health.HEALTHY,
    ]
    assert reports[1].reasons == (
        HealthReason(T, W, "GPU 0 temperature 85 °C ≥ warning 80 °C", 85.0, 80.0, "gpu0"),
    )
    assert reports[2].reasons == (
        HealthReason(T, C, "GPU 0 temperature 95 °C ≥ critical 90 °C", 95.0, 90.0, "gpu0"),
    )
    assert reports[4].reasons == ()


def test_hovering_at_the_threshold_does_not_flap() -> None:
    temps = [79.9, 80.0, 79.9, 80.0, 79.9, 76.0, 75.1, 75.0, 79.9]
    statuses = [r.status for r in run([gpu(t) for t in temps])]
    assert statuses == [Health.HEALTHY] + [Health.DEGRADED] * 6 + [Health.HEALTHY] * 2


def test_held_level_says_when_it_clears() -> None:
    reports = run([gpu(80), gpu(77.5)])
    assert reports[1].reasons == (
        HealthReason(T, W, "GPU 0 temperature 77.5 °C, warning until ≤ 75 °C", 77.5, 80.0, "gpu0"),
    )


def test_critical_is_held_above_its_clear_level() -> None:
    statuses = [r.status for r in run([gpu(90), gpu(86), gpu(85.5), gpu(85)])]
    assert statuses == [Health.UNHEALTHY, Health.UNHEALTHY, Health.UNHEALTHY, Health.DEGRADED]


@pytest.mark.parametrize(
    ("value", "previous", "expected"),
    [
        (79.9, None, None),
        (80.0, None, W),
        (89.9, None, W),
        (90.0, None, C),
        (75.1, W, W),
        (75.0, W, None),
        (85.1, C, C),
        (85.0, C, W),
        (75.0, C, None),
        (91.0, W, C),
    ],
)
def test_band_level(value: float, previous: Severity | None, expected: Severity | None) -> None:
    assert band_level(value, Band(80, 90, 5), previous) is expected


def test_each_gpu_and_device_is_judged_on_its_own() -> None:
    usage = {
        "gpus": [
            {"index": 0, "temperature_c": 60},
            {"index": 1, "temperature_c": 92},
        ],
        "devices": [
            {"resource": "asic.s19", "id": "A1", "temperature_c": 83.5, "errors": None},
            {"resource": "asic.s19", "id": "A2", "temperature_c": None},
        ],
    }
    report = check(usage)
    assert report.status is Health.UNHEALTHY
    assert report.reasons == (
        HealthReason(T, C, "GPU 1 temperature 92 °C ≥ critical 90 °C", 92.0, 90.0, "gpu1"),
        HealthReason(
            T, W, "asic.s19 A1 temperature 83.5 °C ≥ warning 80 °C", 83.5, 80.0, "asic.s19:A1"
        ),
    )


# --------------------------------------------------------------------------- missing sensors


@pytest.mark.parametrize(
    "usage",
    [
        None,
        {},
        {"gpus": None, "devices": None, "memory_percent": None, "disk_percent": None},
        gpu(None, ecc_errors=None, xid_errors=None),
        gpu("hot"),
        gpu(True),
        gpu(float("nan")),
        {"gpus": ["garbage", None, {"temperature_c": 99}]},  # no index: cannot name it
        {"memory_used": 10, "memory_total": 0},
        {"memory_used": None, "memory_total": 100},
        {"devices": [{"resource": "asic.s19", "temperature_c": 99}]},  # no id
        {"disk_percent": "full"},
    ],
)
def test_a_missing_or_odd_sensor_is_never_an_error(usage: Mapping[str, Any] | None) -> None:
    assert check(usage) == HealthReport(Health.HEALTHY, (), {})


# --------------------------------------------------------------------------- memory and disk


def test_memory_and_disk_pressure() -> None:
    report = check({"memory_percent": 91.0, "disk_percent": 86.0})
    assert report.status is Health.UNHEALTHY
    assert report.reasons == (
        HealthReason(HealthRule.MEMORY, C, "Memory use 91 % ≥ critical 90 %", 91.0, 90.0),
        HealthReason(HealthRule.DISK, W, "Disk use 86 % ≥ warning 85 %", 86.0, 85.0),
    )


def test_memory_percent_from_used_and_total_when_percent_is_missing() -> None:
    report = check({"memory_used": 82, "memory_total": 100, "disk_used": 1, "disk_total": 4})
    assert report.reasons == (
        HealthReason(HealthRule.MEMORY, W, "Memory use 82 % ≥ warning 80 %", 82.0, 80.0),
    )


def test_disk_hysteresis_uses_points() -> None:
    statuses = [
        r.status for r in run([{"disk_percent": p} for p in (95.0, 90.5, 90.0, 80.5, 80.0)])
    ]
    assert statuses == [
        Health.UNHEALTHY,
        Health.UNHEALTHY,
        Health.DEGRADED,
        Health.DEGRADED,
        Health.HEALTHY,
    ]


# --------------------------------------------------------------------------- device errors


def test_a_rise_of_ecc_errors_degrades_for_the_hold_time() -> None:
    first = check(gpu(50, ecc_errors=0, xid_errors=0))
    assert first.status is Health.HEALTHY
    assert first.error_counts == {
        "gpu0/ecc_errors": ErrorCounter(0),
        "gpu0/xid_errors": ErrorCounter(0),
    }
    risen = check(gpu(50, ecc_errors=2, xid_errors=0), previous=first, now=NOW + 10)
    assert risen.status is Health.DEGRADED
    assert risen.reasons == (
        HealthReason(
            HealthRule.ECC_ERRORS,
            W,
            "gpu0: uncorrected ECC errors rose to 2 0 s ago",
            2,
            None,
            "gpu0",
        ),
    )
    assert risen.error_counts["gpu0/ecc_errors"] == ErrorCounter(2, NOW + 10)
    steady = check(gpu(50, ecc_errors=2, xid_errors=0), previous=risen, now=NOW + 609)
    assert steady.status is Health.DEGRADED
    assert steady.reasons[0].message == "gpu0: uncorrected ECC errors rose to 2 599 s ago"
    cleared = check(gpu(50, ecc_errors=2, xid_errors=0), previous=steady, now=NOW + 610)
    assert cleared.status is Health.HEALTHY
    assert cleared.error_counts["gpu0/ecc_errors"] == ErrorCounter(2, NOW + 10)


def test_a_new_xid_degrades() -> None:
    first = check(gpu(50, xid_errors=1))  # first sight counts from 0
    assert first.status is Health.DEGRADED
    assert [(r.rule, r.device) for r in first.reasons] == [(HealthRule.XID_ERRORS, "gpu0")]


def test_many_errors_make_a_node_unhealthy() -> None:
    report = check(gpu(50, xid_errors=5))
    assert report.reasons == (
        HealthReason(HealthRule.XID_ERRORS, C, "gpu0: 5 Xid errors ≥ critical 5", 5, 5, "gpu0"),
    )
    assert report.status is Health.UNHEALTHY


def test_asic_error_counter() -> None:
    usage = {"devices": [{"resource": "asic.s19", "id": "A1", "errors": 3}]}
    report = check(usage)
    assert report.reasons == (
        HealthReason(
            HealthRule.DEVICE_ERRORS,
            W,
            "asic.s19:A1: errors rose to 3 0 s ago",
            3,
            None,
            "asic.s19:A1",
        ),
    )


def test_a_counter_reset_is_a_new_baseline_not_new_errors() -> None:
    first = check(gpu(50, xid_errors=4))
    reset = check(gpu(50, xid_errors=0), previous=first, now=NOW + 700)
    assert reset.status is Health.HEALTHY
    assert reset.error_counts["gpu0/xid_errors"] == ErrorCounter(0, NOW)
    again = check(gpu(50, xid_errors=1), previous=reset, now=NOW + 710)
    assert again.status is Health.DEGRADED


def test_a_counter_that_does_not_read_keeps_its_state() -> None:
    first = check(gpu(50, ecc_errors=3))
    blip = check(gpu(50, ecc_errors=None), previous=first, now=NOW + 20)
    assert blip.error_counts == {"gpu0/ecc_errors": ErrorCounter(3, NOW)}
    assert blip.status is Health.DEGRADED  # still within the hold of the rise at NOW
    back = check(gpu(50, ecc_errors=3), previous=blip, now=NOW + 700)
    assert back.status is Health.HEALTHY  # 3 is not new


# --------------------------------------------------------------------------- failures, heartbeat


@pytest.mark.parametrize(
    ("ages", "expected"),
    [
        ((), Health.HEALTHY),
        ((1, 2), Health.HEALTHY),
        ((1, 2, 599), Health.DEGRADED),
        ((1, 2, 600), Health.HEALTHY),  # 600 s ago is outside the 10-minute window
        ((1, 2, 3, 4, 5, 6), Health.UNHEALTHY),
        ((1, 2, 3, 4, 5, 900), Health.DEGRADED),
    ],
)
def test_recent_task_failures(ages: tuple[float, ...], expected: Health) -> None:
    assert check({}, failures=[NOW - a for a in ages]).status is expected


def test_task_failure_reason() -> None:
    report = check({}, failures=[NOW - 1] * 6)
    assert report.reasons == (
        HealthReason(
            HealthRule.TASK_FAILURES, C, "6 task failures in the last 600 s ≥ critical 6", 6, 6
        ),
    )


@pytest.mark.parametrize(
    ("late", "expected"),
    [
        (0.0, Health.HEALTHY),
        (20.0, Health.HEALTHY),  # exactly two intervals: the second may be in flight
        (20.5, Health.DEGRADED),
        (30.0, Health.DEGRADED),
        (30.5, Health.UNHEALTHY),
    ],
)
def test_heartbeat_lateness(late: float, expected: Health) -> None:
    assert check({}, late_s=late).status is expected


def test_heartbeat_reason_and_never_seen() -> None:
    report = check({}, late_s=45)
    assert report.reasons == (
        HealthReason(
            HealthRule.HEARTBEAT,
            C,
            "no heartbeat for 45 s (4.5 intervals of 10 s) > critical 3",
            4.5,
            3.0,
        ),
    )
    assert check(None, late_s=None).status is Health.HEALTHY


def test_interval_must_be_positive() -> None:
    with pytest.raises(InvalidInput, match="heartbeat_interval_s"):
        evaluate_health({}, last_heartbeat_at=None, heartbeat_interval_s=0, now=NOW)


def test_reasons_critical_first_then_rule() -> None:
    usage = {**gpu(85), "memory_percent": 95.0, "disk_percent": 90.0}
    report = check(usage, failures=[NOW] * 3)
    assert [(r.severity, r.rule) for r in report.reasons] == [
        (C, HealthRule.MEMORY),
        (W, HealthRule.DISK),
        (W, HealthRule.TASK_FAILURES),
        (W, HealthRule.TEMPERATURE),
    ]


# --------------------------------------------------------------------------- values


def test_round_trips_for_storage() -> None:
    report = check(gpu(95, ecc_errors=1))
    restored = [HealthReason.from_dict(r.to_dict()) for r in report.reasons]
    assert tuple(restored) == report.reasons
    counts = {k: ErrorCounter.from_dict(v.to_dict()) for k, v in report.error_counts.items()}
    assert counts == report.error_counts
    assert report.to_dict() == {
        "status": "unhealthy",
        "reasons": [
            {
                "rule": "temperature",
                "severity": "critical",
                "message": "GPU 0 temperature 95 °C ≥ critical 90 °C",
                "value": 95.0,
                "threshold": 90.0,
                "device": "gpu0",
            },
            {
                "rule": "ecc_errors",
                "severity": "warning",
                "message": "gpu0: uncorrected ECC errors rose to 1 0 s ago",
                "value": 1,
                "threshold": None,
                "device": "gpu0",
            },
        ],
    }


def test_health_change() -> None:
    report = check(gpu(95))
    assert health_change("n1", Health.UNHEALTHY, report, NOW) is None
    assert health_change("n1", Health.HEALTHY, report, NOW) == HealthChange(
        "n1", NOW, Health.HEALTHY, Health.UNHEALTHY, report.reasons
    )


# --------------------------------------------------------------------------- config


def test_config_defaults_and_overrides() -> None:
    assert thresholds_from_config({}) == DEFAULT_THRESHOLDS
    got = thresholds_from_config(
        {
            "temperature": {"warning": 75, "clear_margin": 3},
            "disk": {"critical": 99.5},
            "heartbeat": {"unhealthy_missed": 5},
            "task_failures": {"window_s": 300, "degraded": 2},
            "device_errors": {"unhealthy": 1, "hold_s": 0},
        }
    )
    assert got == HealthThresholds(
        temperature=Band(75, 90, 3),
        disk=Band(85, 99.5, 5),
        heartbeat_unhealthy_missed=5,
        failures_window_s=300,
        failures_degraded=2,
        errors_unhealthy=1,
        errors_hold_s=0,
    )


@pytest.mark.parametrize(
    ("config", "key", "message"),
    [
        (
            {"temprature": {}},
            "health.temprature",
            "health.temprature: unknown key; known keys are device_errors, disk, heartbeat, "
            "memory, task_failures, temperature",
        ),
        (
            {"temperature": {"warn": 70}},
            "health.temperature.warn",
            "health.temperature.warn: unknown key; known keys are clear_margin, critical, warning",
        ),
        (
            {"memory": {"warning": "80%"}},
            "health.memory.warning",
            "health.memory.warning: expected a number, got '80%'",
        ),
        (
            {"disk": {"warning": True}},
            "health.disk.warning",
            "health.disk.warning: expected a number, got True",
        ),
        (
            {"task_failures": {"degraded": 2.5}},
            "health.task_failures.degraded",
            "health.task_failures.degraded: expected a whole number, got 2.5",
        ),
        (
            {"memory": {"critical": 120}},
            "health.memory.critical",
            "health.memory.critical: 120 is above 100",
        ),
        (
            {"temperature": {"warning": 95}},
            "health.temperature",
            "health.temperature: warning (95) must be above 0 and at most critical (90)",
        ),
        (
            {"temperature": {"clear_margin": 80}},
            "health.temperature.clear_margin",
            "health.temperature.clear_margin: 80 must be at least 0 and below warning (80)",
        ),
        (
            {"heartbeat": {"degraded_missed": 4}},
            "health.heartbeat",
            "health.heartbeat: degraded (4) must be above 0 and at most unhealthy (3)",
        ),
        (
            {"task_failures": {"window_s": 0}},
            "health.task_failures.window_s",
            "health.task_failures.window_s: 0 must be above 0",
        ),
        (
            {"device_errors": {"unhealthy": 0}},
            "health.device_errors.unhealthy",
            "health.device_errors.unhealthy: 0 must be at least 1",
        ),
        (
            {"device_errors": {"hold_s": float("inf")}},
            "health.device_errors.hold_s",
            "health.device_errors.hold_s: expected a finite number, got inf",
        ),
        ({"disk": 3}, "health.disk", "health.disk: expected a table, got int"),
    ],
)
def test_config_errors_name_the_key(config: dict[str, Any], key: str, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        thresholds_from_config(config)
    assert caught.value.message == message
    assert caught.value.data == {"field": key}


def test_thresholds_checked_when_built_directly() -> None:
    with pytest.raises(InvalidInput, match=r"health\.task_failures: degraded \(7\)"):
        HealthThresholds(failures_degraded=7)
