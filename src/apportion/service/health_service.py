"""Node health from heartbeats: the core's rules, applied as samples arrive.

Each heartbeat's usage is judged by ``core.health.evaluate_health`` with the
previous report passed back (hysteresis, error counters). When a node's status
changes, the ledger records it on the node, so the scheduler stops placing
work on unhealthy nodes and scores degraded ones down; a sweep re-judges nodes
whose heartbeats stopped (lateness).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import structlog

from apportion.core.health import (
    DEFAULT_THRESHOLDS,
    HealthChange,
    HealthReport,
    HealthThresholds,
    evaluate_health,
    health_change,
)
from apportion.core.model import Health
from apportion.exceptions import NodeNotFound
from apportion.service.ledger_service import LedgerService

log = structlog.get_logger(__name__)

RECENT_CHANGES = 50
"""Status changes kept per node for ``GET /health-checks/{node}``."""


@dataclass
class NodeHealth:
    """What is known of one node's health: its last sample and report."""

    report: HealthReport = field(default_factory=lambda: HealthReport(Health.HEALTHY))
    usage: Mapping[str, Any] | None = None
    last_heartbeat_at: float | None = None
    interval_s: float = 10.0
    failures: deque[float] = field(default_factory=lambda: deque(maxlen=100))
    changes: deque[HealthChange] = field(default_factory=lambda: deque(maxlen=RECENT_CHANGES))


class HealthService:
    """Keeps every node's health report and pushes status changes to the ledger."""

    def __init__(self, ledger: LedgerService, thresholds: HealthThresholds = DEFAULT_THRESHOLDS,
                 clock: Callable[[], float] = time.time) -> None:
        self.ledger = ledger
        self.thresholds = thresholds
        self.clock = clock
        self.nodes: dict[str, NodeHealth] = {}

    async def observe(self, node: str, usage: Mapping[str, Any] | None, *,
                      interval_s: float | None = None, at: float | None = None) -> HealthReport:
        """A heartbeat arrived with ``usage`` (received ``at``): judge it now."""
        state = self.nodes.setdefault(node, NodeHealth())
        state.usage = usage
        state.last_heartbeat_at = at if at is not None else self.clock()
        if interval_s:
            state.interval_s = interval_s
        return await self._judge(node, state)

    def record_failure(self, node: str) -> None:
        """A task failed on ``node`` (repeated failures make it degraded)."""
        self.nodes.setdefault(node, NodeHealth()).failures.append(self.clock())

    async def sweep(self) -> list[HealthChange]:
        """Re-judge every node that has sent heartbeats (they may have stopped)."""
        changes = []
        for name, state in list(self.nodes.items()):
            if state.last_heartbeat_at is None or name not in self.ledger.nodes:
                continue
            before = state.report.status
            report = await self._judge(name, state)
            if report.status is not before and state.changes:
                changes.append(state.changes[-1])
        return changes

    async def _judge(self, node: str, state: NodeHealth) -> HealthReport:
        now = self.clock()
        report = evaluate_health(
            state.usage, last_heartbeat_at=state.last_heartbeat_at,
            heartbeat_interval_s=state.interval_s, now=now, recent_failures=tuple(state.failures),
            previous_error_counts=state.report.error_counts,
            previous_reasons=state.report.reasons, thresholds=self.thresholds,
        )
        state.report = report
        await self._apply(node, state, report, now)
        return report

    async def _apply(self, node: str, state: NodeHealth, report: HealthReport, now: float) -> None:
        try:
            current = self.ledger.node(node)
        except NodeNotFound:
            return
        change = health_change(node, current.health, report, now)
        if change is None:
            return
        state.changes.append(change)
        log.info("node_health", node=node, previous=change.previous.value,
                 current=change.current.value, reasons=[r.message for r in report.reasons])
        await self.ledger.update_node(replace(current, health=report.status))

    def report(self, node: str) -> dict[str, Any]:
        state = self.nodes.get(node, NodeHealth())
        return {
            "node": node,
            **state.report.to_dict(),
            "last_heartbeat_at": state.last_heartbeat_at,
            "heartbeat_interval_s": state.interval_s,
            "recent_changes": [c.to_dict() for c in reversed(state.changes)],
        }

    def reports(self) -> dict[str, HealthReport]:
        return {name: s.report for name, s in self.nodes.items()}
