"""Alert identity, the alert book state machine, and the rules' conditions."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apportion.core.alerts import (
    Alert,
    AlertBook,
    AlertChange,
    AlertRule,
    ChangeKind,
    Condition,
    ExhaustionForecast,
    QueueFacts,
    capacity_conditions,
    fingerprint,
    forecast_conditions,
    node_conditions,
    queue_conditions,
)
from apportion.core.capacity import summarize
from apportion.core.health import (
    HealthReason,
    HealthReport,
    HealthRule,
    Severity,
    evaluate_health,
)
from apportion.core.model import Health, Node
from apportion.exceptions import InvalidInput

W = Severity.WARNING
C = Severity.CRITICAL
GiB = 2**30
HOT_FP = "e8fc81fe5c50d6ed"  # node_health {node: gpu-7}


def cond(node: str, severity: Severity = W, message: str = "m", value: float = 1.0) -> Condition:
    return Condition(AlertRule.NODE_HEALTH, {"node": node}, severity, message, value)


def kinds(changes: list[AlertChange]) -> list[tuple[ChangeKind, str, Severity]]:
    return [(c.kind, c.alert.labels["node"], c.alert.severity) for c in changes]


# --------------------------------------------------------------------------- identity


def test_fingerprint_is_stable_and_ignores_label_order() -> None:
    assert fingerprint(AlertRule.NODE_HEALTH, {"node": "gpu-7"}) == HOT_FP
    labels = {"facility": "texas-1", "resource": "gpu"}
    assert fingerprint(AlertRule.CAPACITY_UTILIZATION, labels) == "45c90d43157d06f0"
    assert fingerprint(AlertRule.CAPACITY_UTILIZATION, dict(reversed(labels.items()))) == (
        "45c90d43157d06f0"
    )
    assert fingerprint(AlertRule.FORECAST_EXHAUSTION, labels) != "45c90d43157d06f0"


# --------------------------------------------------------------------------- the hot node


def test_node_made_hot_raises_one_alert_and_resolves_it_once() -> None:
    book = AlertBook()
    previous: HealthReport | None = None
    log: list[list[AlertChange]] = []
    for i, temp in enumerate([70, 85, 95, 85, 70]):
        now = 1000.0 + 10 * i
        report = evaluate_health(
            {"gpus": [{"index": 0, "temperature_c": temp}]},
            last_heartbeat_at=now,
            heartbeat_interval_s=10,
            now=now,
            previous_reasons=previous.reasons if previous else (),
        )
        previous = report
        book, changes = book.evaluate(node_conditions({"gpu-7": report}, []), now)
        log.append(changes)
    assert [[(c.kind, c.alert.severity, c.previous_severity) for c in cs] for cs in log] == [
        [],
        [(ChangeKind.RAISED, W, None)],
        [(ChangeKind.UPDATED, C, W)],
        [(ChangeKind.UPDATED, W, C)],
        [(ChangeKind.RESOLVED, W, None)],
    ]
    every = [c for cs in log for c in cs]
    assert {c.alert.fingerprint for c in every} == {HOT_FP}
    assert {c.alert.started_at for c in every} == {1010.0}
    assert log[2][0].alert.message == (
        "Node gpu-7 is unhealthy: GPU 0 temperature 95 °C ≥ critical 90 °C"
    )
    assert log[4][0].alert.resolved_at == 1040.0
    assert book == AlertBook()


# --------------------------------------------------------------------------- the book


def test_a_held_condition_updates_in_place_without_a_change() -> None:
    book, changes = AlertBook().evaluate([cond("a", value=1.0, message="one")], 10.0)
    assert kinds(changes) == [(ChangeKind.RAISED, "a", W)]
    book2, changes = book.evaluate([cond("a", value=2.0, message="two")], 20.0)
    assert changes == []
    fp = fingerprint(AlertRule.NODE_HEALTH, {"node": "a"})
    assert book2.alerts == {
        fp: Alert(fp, AlertRule.NODE_HEALTH, {"node": "a"}, W, "two", 2.0, None, 10.0, 20.0)
    }
    assert book.alerts[fp].message == "one"  # the old book is a value, untouched


def test_duplicate_conditions_are_one_alert_and_the_most_severe_speaks() -> None:
    book, changes = AlertBook().evaluate(
        [cond("a", W, "first"), cond("a", C, "worse"), cond("a", C, "also worse")], 1.0
    )
    assert len(book.alerts) == 1
    assert [(c.kind, c.alert.severity, c.alert.message) for c in changes] == [
        (ChangeKind.RAISED, C, "worse")
    ]


def test_resolve_then_raise_again_is_a_new_alert_with_the_same_fingerprint() -> None:
    book, _ = AlertBook().evaluate([cond("a")], 1.0)
    book, resolved = book.evaluate([], 2.0)
    book, raised = book.evaluate([cond("a")], 3.0)
    assert kinds(resolved) == [(ChangeKind.RESOLVED, "a", W)]
    assert kinds(raised) == [(ChangeKind.RAISED, "a", W)]
    assert resolved[0].alert.fingerprint == raised[0].alert.fingerprint
    assert (resolved[0].alert.started_at, raised[0].alert.started_at) == (1.0, 3.0)


def test_resolve_after_keeps_a_flickering_alert_open() -> None:
    book, _ = AlertBook().evaluate([cond("a")], 0.0)
    book, gone = book.evaluate([], 30.0, resolve_after_s=60)
    assert gone == [] and len(book.alerts) == 1
    book, back = book.evaluate([cond("a")], 40.0, resolve_after_s=60)
    assert back == []
    book, gone = book.evaluate([], 99.0, resolve_after_s=60)
    assert gone == []
    book, gone = book.evaluate([], 100.0, resolve_after_s=60)
    assert kinds(gone) == [(ChangeKind.RESOLVED, "a", W)]
    assert gone[0].alert.resolved_at == 100.0
    with pytest.raises(InvalidInput, match="resolve_after_s"):
        book.evaluate([], 1.0, resolve_after_s=-1)


def test_open_alerts_most_severe_then_oldest() -> None:
    book, _ = AlertBook().evaluate([cond("b")], 1.0)
    book, _ = book.evaluate([cond("b"), cond("c", C), cond("a")], 2.0)
    assert [(a.labels["node"], a.severity) for a in book.open_alerts()] == [
        ("c", C),
        ("b", W),
        ("a", W),
    ]


def test_alert_to_dict() -> None:
    _, changes = AlertBook().evaluate([cond("a", C, "hot", 95.0)], 5.0)
    assert changes[0].alert.to_dict() == {
        "fingerprint": fingerprint(AlertRule.NODE_HEALTH, {"node": "a"}),
        "rule": "node_health",
        "labels": {"node": "a"},
        "severity": "critical",
        "status": "firing",
        "message": "hot",
        "value": 95.0,
        "threshold": None,
        "started_at": 5.0,
        "last_seen_at": 5.0,
        "resolved_at": None,
    }


_NODES = st.sampled_from(["a", "b", "c", "d"])
_CONDITION = st.builds(cond, _NODES, st.sampled_from([W, C]), st.sampled_from(["x", "y"]))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(_CONDITION, max_size=6), max_size=12))
def test_open_alerts_match_the_last_conditions(rounds: list[list[Condition]]) -> None:
    book = AlertBook()
    resolved: dict[tuple[str, float], int] = {}
    raised: set[tuple[str, float]] = set()
    for i, conditions in enumerate(rounds):
        book, changes = book.evaluate(conditions, float(i))
        assert len(book.alerts) == len({c.fingerprint for c in conditions})
        assert all(a.open for a in book.alerts.values())
        for change in changes:
            key = (change.alert.fingerprint, change.alert.started_at)
            if change.kind is ChangeKind.RAISED:
                assert key not in raised
                raised.add(key)
            elif change.kind is ChangeKind.RESOLVED:
                assert key in raised
                resolved[key] = resolved.get(key, 0) + 1
    assert all(n == 1 for n in resolved.values())


# --------------------------------------------------------------------------- rules


def _report(status: Health, *messages: str) -> HealthReport:
    reasons = tuple(HealthReason(HealthRule.DISK, W, m) for m in messages)
    return HealthReport(status, reasons)


def test_node_conditions() -> None:
    health = {
        "ok": _report(Health.HEALTHY),
        "warm": _report(Health.DEGRADED, "r1", "r2", "r3", "r4", "r5"),
        "bad": _report(Health.UNHEALTHY),
        "gone": _report(Health.UNHEALTHY, "no heartbeat"),
    }
    found = node_conditions(health, ["gone"])
    assert found == [
        Condition(AlertRule.NODE_DOWN, {"node": "gone"}, C, "Node gone is down"),
        Condition(AlertRule.NODE_HEALTH, {"node": "bad"}, C, "Node bad is unhealthy"),
        Condition(
            AlertRule.NODE_HEALTH,
            {"node": "warm"},
            W,
            "Node warm is degraded: r1; r2; r3; and 2 more",
        ),
    ]


def test_queue_conditions() -> None:
    queues = [
        QueueFacts("research", 4000.0, {"gpu": 8, "memory": 100 * GiB}, {"gpu": 8}),
        QueueFacts("batch", 1800.0, {"cpu": 10_000, "gpu": 0}, {"cpu": 9_000}),
        QueueFacts("idle", None, {"cpu": 1000}, {}),
        QueueFacts("late", 9000.0),
    ]
    found = queue_conditions(queues, 1800, 0.9, wait_critical_s=7200)
    assert found == [
        Condition(
            AlertRule.QUEUE_QUOTA,
            {"queue": "batch", "resource": "cpu"},
            W,
            "Queue batch uses 9 of its 10 cpu quota (90%)",
            0.9,
            0.9,
        ),
        Condition(
            AlertRule.QUEUE_WAIT,
            {"queue": "late"},
            C,
            "Queue late: oldest pending job has waited 9000 s > 7200 s",
            9000.0,
            7200.0,
        ),
        Condition(
            AlertRule.QUEUE_WAIT,
            {"queue": "research"},
            W,
            "Queue research: oldest pending job has waited 4000 s > 1800 s",
            4000.0,
            1800.0,
        ),
        Condition(
            AlertRule.QUEUE_QUOTA,
            {"queue": "research", "resource": "gpu"},
            W,
            "Queue research uses 8 of its 8 gpu quota (100%)",
            1.0,
            0.9,
        ),
    ]
    with pytest.raises(InvalidInput, match="quota_near_share"):
        queue_conditions(queues, 1800, 1.5)


def test_capacity_conditions_per_facility_and_resource() -> None:
    n1 = Node("n1", {"cpu": 32000, "gpu": 4}, labels={"facility": "texas-1"})
    n2 = Node("n2", {"cpu": 16000, "asic.s19": 10}, labels={"facility": "oslo"})
    groups = summarize([(n1, {"cpu": 30000, "gpu": 4}), (n2, {"asic.s19": 9})], "facility")
    found = capacity_conditions(groups, 0.9, critical=1.0)
    assert [(c.labels, c.severity, c.message, c.value, c.threshold) for c in found] == [
        (
            {"facility": "oslo", "resource": "asic.s19"},
            W,
            "asic.s19 in facility oslo is 90% allocated ≥ 90%",
            0.9,
            0.9,
        ),
        (
            {"facility": "texas-1", "resource": "cpu"},
            W,
            "cpu in facility texas-1 is 94% allocated ≥ 90%",
            0.9375,
            0.9,
        ),
        (
            {"facility": "texas-1", "resource": "gpu"},
            C,
            "gpu in facility texas-1 is 100% allocated ≥ 100%",
            1.0,
            1.0,
        ),
    ]
    assert {c.rule for c in found} == {AlertRule.CAPACITY_UTILIZATION}
    assert capacity_conditions(groups, 0.95) == [
        Condition(
            AlertRule.CAPACITY_UTILIZATION,
            {"facility": "texas-1", "resource": "gpu"},
            W,
            "gpu in facility texas-1 is 100% allocated ≥ 95%",
            1.0,
            0.95,
        )
    ]


def test_forecast_conditions() -> None:
    day = 86400.0
    forecasts = [
        ExhaustionForecast("texas-1", "gpu", 2 * day),
        ExhaustionForecast("texas-1", "cpu", 30 * day),
        ExhaustionForecast("oslo", "asic.s19", 3 * 3600.0),
        ExhaustionForecast("oslo", "cpu", None),
    ]
    found = forecast_conditions(forecasts, 7 * day, critical_s=day)
    assert found == [
        Condition(
            AlertRule.FORECAST_EXHAUSTION,
            {"facility": "oslo", "resource": "asic.s19"},
            C,
            "asic.s19 in facility oslo is forecast to run out in 3.0 h (within 24 h)",
            10800.0,
            day,
        ),
        Condition(
            AlertRule.FORECAST_EXHAUSTION,
            {"facility": "texas-1", "resource": "gpu"},
            W,
            "gpu in facility texas-1 is forecast to run out in 48.0 h (within 168 h)",
            2 * day,
            7 * day,
        ),
    ]
