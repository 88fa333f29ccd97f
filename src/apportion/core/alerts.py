"""Alerts: turn cluster facts into conditions, and conditions into alerts.

An alert's identity is its rule plus its labels (``node_health`` +
``{node: gpu-7}``), hashed into a stable :func:`fingerprint`. The
:class:`AlertBook` holds the open alerts; each evaluation takes the full set
of conditions that hold *now*:

- a condition with no open alert raises one;
- a condition with an open alert updates it in place (message, value, and
  severity — a warning that becomes critical stays the same alert);
- an open alert whose condition is absent resolves (optionally only after it
  has been absent ``resolve_after_s``, for conditions that flicker).

Everything is a value: ``evaluate`` returns a new book and the changes, and
the caller stores one and notifies the other.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from apportion.core.capacity import GroupSummary
from apportion.core.errors import InvalidInput
from apportion.core.health import HealthReport, Severity
from apportion.core.model import Health
from apportion.core.resources import format_human

__all__ = [
    "Alert",
    "AlertBook",
    "AlertChange",
    "AlertRule",
    "ChangeKind",
    "Condition",
    "ExhaustionForecast",
    "QueueFacts",
    "Severity",
    "capacity_conditions",
    "fingerprint",
    "forecast_conditions",
    "node_conditions",
    "queue_conditions",
]


class AlertRule(StrEnum):
    NODE_HEALTH = "node_health"
    NODE_DOWN = "node_down"
    QUEUE_WAIT = "queue_wait"
    QUEUE_QUOTA = "queue_quota"
    CAPACITY_UTILIZATION = "capacity_utilization"
    FORECAST_EXHAUSTION = "forecast_exhaustion"


class ChangeKind(StrEnum):
    RAISED = "raised"
    UPDATED = "updated"  # only when the severity changed; value/message drift is silent
    RESOLVED = "resolved"


_SEVERITY_RANK = {Severity.WARNING: 0, Severity.CRITICAL: 1}


def fingerprint(rule: AlertRule, labels: Mapping[str, str]) -> str:
    """16 hex digits identifying (rule, labels), the same in every process and
    release: label order does not matter, and Python's salted hash is not used."""
    canonical = json.dumps([rule.value, sorted(labels.items())], separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Condition:
    """A rule's finding that holds now, e.g. "node gpu-7 is unhealthy"."""

    rule: AlertRule
    labels: Mapping[str, str]
    severity: Severity
    message: str
    value: float | None = None
    threshold: float | None = None

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.rule, self.labels)


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert: open while ``resolved_at`` is None."""

    fingerprint: str
    rule: AlertRule
    labels: Mapping[str, str]
    severity: Severity
    message: str
    value: float | None
    threshold: float | None
    started_at: float
    last_seen_at: float
    resolved_at: float | None = None

    @property
    def open(self) -> bool:
        return self.resolved_at is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "rule": self.rule.value,
            "labels": dict(self.labels),
            "severity": self.severity.value,
            "status": "firing" if self.open else "resolved",
            "message": self.message,
            "value": self.value,
            "threshold": self.threshold,
            "started_at": self.started_at,
            "last_seen_at": self.last_seen_at,
            "resolved_at": self.resolved_at,
        }


@dataclass(frozen=True, slots=True)
class AlertChange:
    """What an evaluation did to one alert; every change becomes an event."""

    kind: ChangeKind
    alert: Alert
    at: float
    previous_severity: Severity | None = None


@dataclass(frozen=True, slots=True)
class AlertBook:
    """The open alerts, by fingerprint. Never mutated: ``evaluate`` returns a new book."""

    alerts: Mapping[str, Alert] = field(default_factory=dict)

    def open_alerts(self) -> list[Alert]:
        """Open alerts, most severe first, then oldest first."""
        return sorted(
            self.alerts.values(),
            key=lambda a: (-_SEVERITY_RANK[a.severity], a.started_at, a.fingerprint),
        )

    def evaluate(
        self, conditions: Iterable[Condition], now: float, *, resolve_after_s: float = 0.0
    ) -> tuple[AlertBook, list[AlertChange]]:
        """Apply the conditions that hold at ``now``; see the module docstring."""
        if resolve_after_s < 0:
            raise InvalidInput("resolve_after_s: must be at least 0", field="resolve_after_s")
        current = _strongest(conditions)
        alerts: dict[str, Alert] = {}
        changes: list[AlertChange] = []
        for fp in sorted(current):
            alert, change = _apply(self.alerts.get(fp), current[fp], fp, now)
            alerts[fp] = alert
            if change is not None:
                changes.append(change)
        for fp in sorted(set(self.alerts) - set(current)):
            alert = self.alerts[fp]
            if now - alert.last_seen_at < resolve_after_s:
                alerts[fp] = alert
            else:
                changes.append(
                    AlertChange(ChangeKind.RESOLVED, replace(alert, resolved_at=now), now)
                )
        return AlertBook(alerts), changes


def _strongest(conditions: Iterable[Condition]) -> dict[str, Condition]:
    # Two findings for one identity in one pass (e.g. two facts feeding one
    # rule) are one alert; the most severe speaks for it, the first on ties.
    chosen: dict[str, Condition] = {}
    for cond in conditions:
        fp = cond.fingerprint
        held = chosen.get(fp)
        if held is None or _SEVERITY_RANK[cond.severity] > _SEVERITY_RANK[held.severity]:
            chosen[fp] = cond
    return chosen


def _apply(
    old: Alert | None, cond: Condition, fp: str, now: float
) -> tuple[Alert, AlertChange | None]:
    if old is None:
        alert = Alert(
            fp,
            cond.rule,
            dict(cond.labels),
            cond.severity,
            cond.message,
            cond.value,
            cond.threshold,
            started_at=now,
            last_seen_at=now,
        )
        return alert, AlertChange(ChangeKind.RAISED, alert, now)
    alert = replace(
        old,
        severity=cond.severity,
        message=cond.message,
        value=cond.value,
        threshold=cond.threshold,
        last_seen_at=now,
    )
    if cond.severity is old.severity:
        return alert, None
    return alert, AlertChange(ChangeKind.UPDATED, alert, now, previous_severity=old.severity)


# --------------------------------------------------------------------------- rules


def node_conditions(
    nodes_health: Mapping[str, HealthReport], nodes_down: Iterable[str]
) -> list[Condition]:
    """``node_down`` (critical) for each down node; ``node_health`` for each
    other node that is degraded (warning) or unhealthy (critical).

    A down node gets no health alert: its health is stale and mostly says
    "heartbeat late", which the down alert already says.
    """
    down = set(nodes_down)
    found = [
        Condition(AlertRule.NODE_DOWN, {"node": n}, Severity.CRITICAL, f"Node {n} is down")
        for n in sorted(down)
    ]
    for name in sorted(set(nodes_health) - down):
        cond = _health_condition(name, nodes_health[name])
        if cond is not None:
            found.append(cond)
    return found


def _health_condition(node: str, report: HealthReport) -> Condition | None:
    if report.status is Health.HEALTHY:
        return None
    severity = Severity.CRITICAL if report.status is Health.UNHEALTHY else Severity.WARNING
    shown = "; ".join(r.message for r in report.reasons[:3])
    more = len(report.reasons) - 3
    detail = f"{shown}; and {more} more" if more > 0 else shown
    message = f"Node {node} is {report.status.value}" + (f": {detail}" if detail else "")
    return Condition(AlertRule.NODE_HEALTH, {"node": node}, severity, message)


@dataclass(frozen=True, slots=True)
class QueueFacts:
    """What the queue rules need to know about one queue now."""

    name: str
    longest_wait_s: float | None  # the oldest pending job's wait; None when none is pending
    quota: Mapping[str, int] = field(default_factory=dict)  # missing resource: unlimited
    used: Mapping[str, int] = field(default_factory=dict)


def queue_conditions(
    queues: Iterable[QueueFacts],
    wait_limit_s: float,
    quota_near_share: float,
    *,
    wait_critical_s: float | None = None,
) -> list[Condition]:
    """``queue_wait`` when a queue's oldest pending job has waited longer than
    ``wait_limit_s`` (critical beyond ``wait_critical_s`` if given);
    ``queue_quota`` (warning) per resource whose use reached
    ``quota_near_share`` of the quota.

    A full quota stays a warning: it is the tenant's limit doing its job, not
    an outage, and paging someone for it would teach them to ignore pages.
    """
    _check_share("quota_near_share", quota_near_share)
    found: list[Condition] = []
    for queue in sorted(queues, key=lambda q: q.name):
        wait = _wait_condition(queue, wait_limit_s, wait_critical_s)
        if wait is not None:
            found.append(wait)
        found.extend(_quota_conditions(queue, quota_near_share))
    return found


def _wait_condition(
    queue: QueueFacts, limit_s: float, critical_s: float | None
) -> Condition | None:
    wait = queue.longest_wait_s
    if wait is None or wait <= limit_s:
        return None
    critical = critical_s is not None and wait > critical_s
    severity = Severity.CRITICAL if critical else Severity.WARNING
    threshold = critical_s if critical and critical_s is not None else limit_s
    message = f"Queue {queue.name}: oldest pending job has waited {wait:.0f} s > {threshold:g} s"
    return Condition(
        AlertRule.QUEUE_WAIT, {"queue": queue.name}, severity, message, wait, threshold
    )


def _quota_conditions(queue: QueueFacts, near: float) -> list[Condition]:
    found = []
    for resource in sorted(queue.quota):
        quota, used = queue.quota[resource], queue.used.get(resource, 0)
        if quota <= 0 or used / quota < near:  # a zero quota forbids, it cannot fill
            continue
        message = (
            f"Queue {queue.name} uses {format_human(resource, used)} of its "
            f"{format_human(resource, quota)} {resource} quota ({used / quota:.0%})"
        )
        labels = {"queue": queue.name, "resource": resource}
        found.append(
            Condition(AlertRule.QUEUE_QUOTA, labels, Severity.WARNING, message, used / quota, near)
        )
    return found


def capacity_conditions(
    groups: Iterable[GroupSummary],
    threshold: float,
    *,
    critical: float | None = None,
    group_by: str = "facility",
) -> list[Condition]:
    """``capacity_utilization`` per group (facility by default) and resource
    whose allocated share reached ``threshold`` (critical from ``critical``)."""
    _check_share("threshold", threshold)
    found: list[Condition] = []
    for group in sorted(groups, key=lambda g: g.group):
        for resource in sorted(group.resources):
            totals = group.resources[resource]
            share = totals.allocated_share
            if totals.total <= 0 or share < threshold:
                continue
            hot = critical is not None and share >= critical
            limit = critical if hot and critical is not None else threshold
            message = (
                f"{resource} in {group_by} {group.group} is {share:.0%} allocated ≥ {limit:.0%}"
            )
            labels = {group_by: group.group, "resource": resource}
            severity = Severity.CRITICAL if hot else Severity.WARNING
            found.append(
                Condition(AlertRule.CAPACITY_UTILIZATION, labels, severity, message, share, limit)
            )
    return found


@dataclass(frozen=True, slots=True)
class ExhaustionForecast:
    """When a resource of a facility is forecast to run out (the forecaster's output)."""

    facility: str
    resource: str
    exhausted_in_s: float | None  # None: not within the forecast's reach


def forecast_conditions(
    forecasts: Iterable[ExhaustionForecast],
    horizon_s: float,
    *,
    critical_s: float | None = None,
) -> list[Condition]:
    """``forecast_exhaustion`` for each facility and resource forecast to run
    out within ``horizon_s`` (critical within ``critical_s`` if given)."""
    found: list[Condition] = []
    for fc in sorted(forecasts, key=lambda f: (f.facility, f.resource)):
        eta = fc.exhausted_in_s
        if eta is None or eta > horizon_s:
            continue
        soon = critical_s is not None and eta <= critical_s
        limit = critical_s if soon and critical_s is not None else horizon_s
        message = (
            f"{fc.resource} in facility {fc.facility} is forecast to run out in "
            f"{max(eta, 0.0) / 3600:.1f} h (within {limit / 3600:g} h)"
        )
        labels = {"facility": fc.facility, "resource": fc.resource}
        severity = Severity.CRITICAL if soon else Severity.WARNING
        found.append(
            Condition(AlertRule.FORECAST_EXHAUSTION, labels, severity, message, eta, limit)
        )
    return found


def _check_share(name: str, value: float) -> None:
    if not 0 < value <= 1:
        raise InvalidInput(f"{name}: {value!r} must be a share in (0, 1]", field=name)
