"""Node health from heartbeats: rules, thresholds and hysteresis.

Each rule looks at one fact of the latest heartbeat (or at the heartbeat's
lateness, or at recent task failures) and may give a :class:`HealthReason`
with severity ``warning`` or ``critical``. A node with any critical reason is
``unhealthy`` (it gets no new work), with only warnings ``degraded`` (scored
down), otherwise ``healthy``.

Readings are whatever the agent sent: a missing or non-numeric sensor skips
its rule, it never makes a node unhealthy by itself.

Hysteresis: a warning or critical level, once reached, holds until the
reading falls to ``threshold - clear_margin`` (5 °C, 5 points by default),
so a GPU hovering at 79.9/80.0 °C stays degraded instead of flapping. The
caller keeps the previous report's ``reasons`` and ``error_counts`` and passes
them back; that is the only state, and it is a plain value.

See docs/observability-core.md for the rules as an operator reads them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from apportion.core.errors import InvalidInput
from apportion.core.health_thresholds import (
    DEFAULT_THRESHOLDS,
    Band,
    HealthRule,
    HealthThresholds,
    Severity,
    thresholds_from_config,
)
from apportion.core.model import Health


@dataclass(frozen=True, slots=True)
class HealthReason:
    """Why a node is not healthy: one rule on one device (or the whole node)."""

    rule: HealthRule
    severity: Severity
    message: str
    value: float | None = None
    threshold: float | None = None
    device: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule.value,
            "severity": self.severity.value,
            "message": self.message,
            "value": self.value,
            "threshold": self.threshold,
            "device": self.device,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HealthReason:
        return cls(
            HealthRule(data["rule"]),
            Severity(data["severity"]),
            str(data["message"]),
            data.get("value"),
            data.get("threshold"),
            data.get("device"),
        )


@dataclass(frozen=True, slots=True)
class ErrorCounter:
    """Last seen value of one cumulative device error counter, and when it last rose."""

    count: int
    increased_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "increased_at": self.increased_at}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ErrorCounter:
        return cls(int(data["count"]), data.get("increased_at"))


@dataclass(frozen=True, slots=True)
class HealthReport:
    """A node's derived health. Pass ``reasons`` and ``error_counts`` back into
    the next :func:`evaluate_health` call for hysteresis and error tracking."""

    status: Health
    reasons: tuple[HealthReason, ...] = ()
    error_counts: Mapping[str, ErrorCounter] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status.value, "reasons": [r.to_dict() for r in self.reasons]}


@dataclass(frozen=True, slots=True)
class HealthChange:
    """A node's status moved from ``previous`` to ``current`` at ``at``."""

    node: str
    at: float
    previous: Health
    current: Health
    reasons: tuple[HealthReason, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "at": self.at,
            "previous": self.previous.value,
            "current": self.current.value,
            "reasons": [r.to_dict() for r in self.reasons],
        }


def health_change(
    node: str, previous: Health, report: HealthReport, now: float
) -> HealthChange | None:
    """The change to record for ``GET /health-checks``, or None when the status held."""
    if report.status is previous:
        return None
    return HealthChange(node, now, previous, report.status, report.reasons)


# --------------------------------------------------------------------------- evaluation

_PreviousLevels = Mapping[tuple[HealthRule, str | None], Severity]


def evaluate_health(
    usage: Mapping[str, Any] | None,
    *,
    last_heartbeat_at: float | None,
    heartbeat_interval_s: float,
    now: float,
    recent_failures: Sequence[float] = (),
    previous_error_counts: Mapping[str, ErrorCounter] | None = None,
    previous_reasons: Sequence[HealthReason] = (),
    thresholds: HealthThresholds = DEFAULT_THRESHOLDS,
) -> HealthReport:
    """Derive a node's health from its latest heartbeat ``usage``.

    ``recent_failures`` are the times of task failures on the node (older ones
    are ignored here, so the caller may pass a loose window).
    ``previous_reasons``/``previous_error_counts`` come from the last report.
    """
    if not heartbeat_interval_s > 0:
        raise InvalidInput("heartbeat_interval_s: must be above 0", field="heartbeat_interval_s")
    sample: Mapping[str, Any] = usage if isinstance(usage, Mapping) else {}
    before: _PreviousLevels = {(r.rule, r.device): r.severity for r in previous_reasons}
    counts = _error_counts(sample, previous_error_counts or {}, now)
    reasons = [
        *_temperature_reasons(sample, before, thresholds.temperature),
        *_pressure_reasons(sample, before, thresholds),
        *_error_reasons(counts, now, thresholds),
        *_failure_reasons(recent_failures, now, thresholds),
        *_heartbeat_reasons(last_heartbeat_at, heartbeat_interval_s, now, thresholds),
    ]
    reasons.sort(key=_reason_order)
    return HealthReport(_status(reasons), tuple(reasons), counts)


def _reason_order(r: HealthReason) -> tuple[int, str, str]:
    return (r.severity is not Severity.CRITICAL, r.rule.value, r.device or "")


def _status(reasons: Sequence[HealthReason]) -> Health:
    severities = {r.severity for r in reasons}
    if Severity.CRITICAL in severities:
        return Health.UNHEALTHY
    if Severity.WARNING in severities:
        return Health.DEGRADED
    return Health.HEALTHY


def band_level(value: float, band: Band, previous: Severity | None) -> Severity | None:
    """The level of ``value`` in ``band`` given the level it had before.

    A level is entered at ``value >= threshold`` and held while
    ``value > threshold - clear_margin``; leaving critical falls to warning
    when the value is still within the warning band.
    """
    if value >= band.critical or (
        previous is Severity.CRITICAL and value > band.critical - band.clear_margin
    ):
        return Severity.CRITICAL
    if value >= band.warning or (previous is not None and value > band.warning - band.clear_margin):
        return Severity.WARNING
    return None


def _band_reason(
    rule: HealthRule,
    what: str,
    value: float,
    unit: str,
    band: Band,
    previous: Severity | None,
    device: str | None = None,
) -> HealthReason | None:
    severity = band_level(value, band, previous)
    if severity is None:
        return None
    threshold = band.critical if severity is Severity.CRITICAL else band.warning
    if value >= threshold:
        text = f"{what} {value:g}{unit} ≥ {severity.value} {threshold:g}{unit}"
    else:
        # Held by hysteresis: say when it will clear, or the operator sees a
        # reading below the threshold and thinks the rule is wrong.
        text = (
            f"{what} {value:g}{unit}, {severity.value} until ≤ "
            f"{threshold - band.clear_margin:g}{unit}"
        )
    return HealthReason(rule, severity, text, value, threshold, device)


def _temperature_reasons(
    sample: Mapping[str, Any], before: _PreviousLevels, band: Band
) -> Iterator[HealthReason]:
    for device, what, temp in _temperatures(sample):
        previous = before.get((HealthRule.TEMPERATURE, device))
        reason = _band_reason(HealthRule.TEMPERATURE, what, temp, " °C", band, previous, device)
        if reason is not None:
            yield reason


def _temperatures(sample: Mapping[str, Any]) -> Iterator[tuple[str, str, float]]:
    """(device id, words for it, °C) for every GPU and device sensor that reads."""
    for gpu in _entries(sample, "gpus"):
        index, temp = gpu.get("index"), _reading(gpu.get("temperature_c"))
        if temp is not None and _is_int(index):
            yield f"gpu{index}", f"GPU {index} temperature", temp
    for dev in _entries(sample, "devices"):
        resource, ident = dev.get("resource"), dev.get("id")
        temp = _reading(dev.get("temperature_c"))
        if temp is not None and isinstance(resource, str) and ident is not None:
            yield f"{resource}:{ident}", f"{resource} {ident} temperature", temp


def _pressure_reasons(
    sample: Mapping[str, Any], before: _PreviousLevels, thresholds: HealthThresholds
) -> Iterator[HealthReason]:
    gauges = (
        (HealthRule.MEMORY, "memory", "Memory use", thresholds.memory),
        (HealthRule.DISK, "disk", "Disk use", thresholds.disk),
    )
    for rule, prefix, what, band in gauges:
        percent = _percent(sample, prefix)
        if percent is None:
            continue
        reason = _band_reason(rule, what, round(percent, 2), " %", band, before.get((rule, None)))
        if reason is not None:
            yield reason


def _percent(sample: Mapping[str, Any], prefix: str) -> float | None:
    # The agent sends the percentage; fall back to used/total from older agents.
    percent = _reading(sample.get(f"{prefix}_percent"))
    if percent is not None:
        return percent
    used, total = _reading(sample.get(f"{prefix}_used")), _reading(sample.get(f"{prefix}_total"))
    if used is None or total is None or total <= 0:
        return None
    return 100.0 * used / total


# Device error counters: (usage list, reading key, rule, words).
_COUNTERS = (
    ("gpus", "ecc_errors", HealthRule.ECC_ERRORS, "uncorrected ECC errors"),
    ("gpus", "xid_errors", HealthRule.XID_ERRORS, "Xid errors"),
    ("devices", "errors", HealthRule.DEVICE_ERRORS, "errors"),
)


def _counter_readings(sample: Mapping[str, Any]) -> Iterator[tuple[str, int]]:
    """(counter key, cumulative count) for every error counter that reads.

    Keys are ``<device>/<reading>``, e.g. ``gpu0/ecc_errors``, ``asic.s19:A1/errors``.
    """
    for group, key, _rule, _words in _COUNTERS:
        for entry in _entries(sample, group):
            device = _device_id(group, entry)
            count = entry.get(key)
            if device is not None and _is_int(count) and count >= 0:
                yield f"{device}/{key}", count


def _device_id(group: str, entry: Mapping[str, Any]) -> str | None:
    if group == "gpus":
        index = entry.get("index")
        return f"gpu{index}" if _is_int(index) else None
    resource, ident = entry.get("resource"), entry.get("id")
    return f"{resource}:{ident}" if isinstance(resource, str) and ident is not None else None


def _error_counts(
    sample: Mapping[str, Any], previous: Mapping[str, ErrorCounter], now: float
) -> dict[str, ErrorCounter]:
    # A counter that does not read this time keeps its last state, so a sensor
    # blip neither forgets recent errors nor counts old ones as new later.
    counts = dict(previous)
    for key, count in _counter_readings(sample):
        counts[key] = _advance(previous.get(key), count, now)
    return counts


def _advance(previous: ErrorCounter | None, count: int, now: float) -> ErrorCounter:
    # A counter never seen counts from 0: errors the server has not seen are
    # new to it, and a server restart must not hide a GPU that just failed.
    seen = previous.count if previous is not None else 0
    increased_at = previous.increased_at if previous is not None else None
    if count > seen:
        return ErrorCounter(count, now)
    # A drop is a reset (driver reload, agent restart): new baseline, and the
    # last rise still holds the node degraded for its hold time.
    return ErrorCounter(count, increased_at)


def _error_reasons(
    counts: Mapping[str, ErrorCounter], now: float, thresholds: HealthThresholds
) -> Iterator[HealthReason]:
    words = {key: (rule, text) for _g, key, rule, text in _COUNTERS}
    for counter_key in sorted(counts):
        device, _, key = counter_key.rpartition("/")
        rule, text = words.get(key, (HealthRule.DEVICE_ERRORS, "errors"))
        reason = _error_reason(rule, device, text, counts[counter_key], now, thresholds)
        if reason is not None:
            yield reason


def _error_reason(
    rule: HealthRule,
    device: str,
    words: str,
    counter: ErrorCounter,
    now: float,
    thresholds: HealthThresholds,
) -> HealthReason | None:
    limit = thresholds.errors_unhealthy
    if counter.count >= limit:
        message = f"{device}: {counter.count} {words} ≥ critical {limit}"
        return HealthReason(rule, Severity.CRITICAL, message, counter.count, limit, device)
    if counter.increased_at is not None and now - counter.increased_at < thresholds.errors_hold_s:
        ago = max(0.0, now - counter.increased_at)
        message = f"{device}: {words} rose to {counter.count} {ago:.0f} s ago"
        return HealthReason(rule, Severity.WARNING, message, counter.count, None, device)
    return None


def _failure_reasons(
    failures: Sequence[float], now: float, thresholds: HealthThresholds
) -> Iterator[HealthReason]:
    window = thresholds.failures_window_s
    count = sum(1 for at in failures if at > now - window)
    for severity, limit in (
        (Severity.CRITICAL, thresholds.failures_unhealthy),
        (Severity.WARNING, thresholds.failures_degraded),
    ):
        if count >= limit:
            message = f"{count} task failures in the last {window:g} s ≥ {severity.value} {limit}"
            yield HealthReason(HealthRule.TASK_FAILURES, severity, message, count, limit)
            return


def _heartbeat_reasons(
    last_at: float | None, interval: float, now: float, thresholds: HealthThresholds
) -> Iterator[HealthReason]:
    if last_at is None:  # never heard from: registration, not lateness, governs it
        return
    missed = (now - last_at) / interval
    for severity, limit in (
        (Severity.CRITICAL, thresholds.heartbeat_unhealthy_missed),
        (Severity.WARNING, thresholds.heartbeat_degraded_missed),
    ):
        # Strictly more: at exactly 2 intervals the second heartbeat may be in flight.
        if missed > limit:
            message = (
                f"no heartbeat for {now - last_at:.0f} s ({missed:.1f} intervals of "
                f"{interval:g} s) > {severity.value} {limit:g}"
            )
            yield HealthReason(HealthRule.HEARTBEAT, severity, message, round(missed, 3), limit)
            return


# --------------------------------------------------------------------------- reading helpers


def _entries(sample: Mapping[str, Any], key: str) -> Iterator[Mapping[str, Any]]:
    value = sample.get(key)
    if isinstance(value, list | tuple):
        yield from (e for e in value if isinstance(e, Mapping))


def _reading(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


__all__ = ["DEFAULT_THRESHOLDS", "Band", "HealthRule", "HealthThresholds", "Severity",
           "thresholds_from_config"]
