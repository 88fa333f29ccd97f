"""Alerts: gather the cluster's conditions, keep one alert per condition, notify.

Every ``interval_s`` the service turns facts (node health and state, queue
waits and quotas, capacity per facility and resource, forecast exhaustion)
into conditions and lets ``core.alerts.AlertBook`` decide what was raised,
updated or resolved. Each change becomes an event and a webhook delivery;
deliveries go through a queue served by their own task, retried with
backoff, so a slow receiver never holds up the scheduler or the API.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import sqlalchemy as sa
import structlog

from apportion.core.alerts import (
    AlertBook,
    AlertChange,
    Condition,
    ExhaustionForecast,
    QueueFacts,
    capacity_conditions,
    forecast_conditions,
    node_conditions,
    queue_conditions,
)
from apportion.core.capacity import summarize
from apportion.core.model import NodeState
from apportion.core.scheduling import JobState
from apportion.core.webhook import alert_payload, backoff_delays, encode_payload
from apportion.service.health_service import HealthService
from apportion.service.jobs_service import JobsService
from apportion.service.ledger_service import LedgerService

log = structlog.get_logger(__name__)

RESOLVED_KEPT = 1000


@dataclass(frozen=True)
class AlertSettings:
    """Limits of the alert rules ([alerts] in the server config file)."""

    interval_s: float = 5.0
    queue_wait_s: float = 3600.0
    queue_wait_critical_s: float | None = None
    quota_near_share: float = 0.9
    capacity_threshold: float = 0.9
    capacity_critical: float | None = 0.98
    forecast_horizon_s: float = 7 * 86400.0
    forecast_critical_s: float | None = 86400.0
    webhooks: tuple[str, ...] = ()
    webhook_attempts: int = 6
    webhook_timeout_s: float = 5.0


@dataclass
class AlertsService:
    ledger: LedgerService
    jobs: JobsService
    health: HealthService
    settings: AlertSettings = field(default_factory=AlertSettings)
    clock: Callable[[], float] = time.time
    book: AlertBook = field(default_factory=AlertBook)
    resolved: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RESOLVED_KEPT))
    forecasts: list[ExhaustionForecast] = field(default_factory=list)
    """Set by the capacity planner; fed into the forecast_exhaustion rule."""
    _outbox: asyncio.Queue[AlertChange] = field(default_factory=asyncio.Queue)
    _sending: set[asyncio.Task[None]] = field(default_factory=set)

    def conditions(self) -> list[Condition]:
        s = self.settings
        ledger = self.ledger.ledger
        nodes = ledger.nodes
        down = [n for n, node in nodes.items() if node.state is NodeState.DOWN]
        reports = {n: r for n, r in self.health.reports().items() if n in nodes}
        groups = summarize(((node, ledger.allocated(n)) for n, node in nodes.items()),
                           "facility")
        return [
            *node_conditions(reports, down),
            *queue_conditions(self._queue_facts(), s.queue_wait_s, s.quota_near_share,
                              wait_critical_s=s.queue_wait_critical_s),
            *capacity_conditions(groups, s.capacity_threshold, critical=s.capacity_critical),
            *forecast_conditions(self.forecasts, s.forecast_horizon_s,
                                 critical_s=s.forecast_critical_s),
        ]

    def _queue_facts(self) -> list[QueueFacts]:
        now = self.clock()
        oldest: dict[str, float] = {}
        for live in self.jobs.live.values():
            if live.state in (JobState.PENDING, JobState.PREEMPTED):
                q = live.row.queue
                oldest[q] = min(oldest.get(q, now), live.row.submit_time)
        usage = self.jobs.queue_usage()
        return [
            QueueFacts(name, now - oldest[name] if name in oldest else None, dict(q.quota),
                       usage.get(name, {}))
            for name, q in self.jobs.queues.items()
        ]

    async def evaluate(self) -> list[AlertChange]:
        """One pass: apply the current conditions, record and send the changes."""
        await self.health.sweep()
        book, changes = self.book.evaluate(self.conditions(), self.clock())
        self.book = book
        if changes:
            await self._record(changes)
        for change in changes:
            if not change.alert.open:
                self.resolved.appendleft(change.alert.to_dict())
            if self.settings.webhooks:
                self._outbox.put_nowait(change)
        return changes

    async def _record(self, changes: list[AlertChange]) -> None:
        def write(conn: sa.Connection) -> None:
            for change in changes:
                self.ledger.event(conn, f"alert.{change.kind.value}", change.alert.fingerprint,
                                  change.alert.to_dict())

        await self.ledger.committer.submit_alone(write)
        for change in changes:
            log.info("alert", change=change.kind.value, rule=change.alert.rule.value,
                     severity=change.alert.severity.value, message=change.alert.message)

    def listing(self, *, state: str | None, severity: str | None) -> list[dict[str, Any]]:
        firing = [a.to_dict() for a in self.book.open_alerts()]
        rows = {"firing": firing, "resolved": list(self.resolved)}.get(
            state or "", firing + list(self.resolved))
        return [a for a in rows if severity is None or a["severity"] == severity]

    async def run_forever(self) -> None:
        while True:
            try:
                await self.evaluate()
            except Exception as exc:
                log.exception("alerts_failed", error=repr(exc))
            await asyncio.sleep(self.settings.interval_s)

    async def deliver_forever(self) -> None:
        """Send each alert change to every webhook, retrying with backoff."""
        rng = random.Random()
        async with httpx.AsyncClient(timeout=self.settings.webhook_timeout_s) as client:
            while True:
                change = await self._outbox.get()
                body = encode_payload(alert_payload(change))
                for url in self.settings.webhooks:
                    task = asyncio.create_task(self._deliver(client, url, body, rng))
                    self._sending.add(task)  # a task nobody holds may be collected
                    task.add_done_callback(self._sending.discard)

    async def _deliver(self, client: httpx.AsyncClient, url: str, body: bytes,
                       rng: random.Random) -> None:
        delays = [0.0, *backoff_delays(self.settings.webhook_attempts - 1, 0.5, 30.0, rng)]
        for attempt, delay in enumerate(delays):
            await asyncio.sleep(delay)
            try:
                r = await client.post(url, content=body,
                                      headers={"content-type": "application/json"})
                if r.status_code < 500:
                    return
            except httpx.HTTPError as exc:
                log.info("webhook_retry", url=url, attempt=attempt, error=repr(exc))
        log.warning("webhook_gave_up", url=url, attempts=len(delays))
