"""Alerts: gather the cluster's conditions, keep one alert per condition, notify.

Every ``interval_s`` the leader turns facts (node health and state, queue
waits and quotas, capacity per facility and resource, forecast exhaustion)
into conditions and lets ``core.alerts.AlertBook`` decide what was raised,
updated or resolved. Each change is written in one transaction: the alert's
row (``alerts``: open and resolved alerts are rows, so a restart or a new
leader carries on with the same alerts and their ``started_at``), an event,
and one delivery row per webhook (``alert_deliveries``, an outbox). The
leader's delivery loop sends what is due, oldest first per receiver (each
receiver's tries run apart, so one that hangs holds up only itself), with
the delivery's key as ``Idempotency-Key`` and the try's number as
``X-Apportion-Delivery-Attempt``; 5xx answers and timeouts are
retried with backoff, other answers end the delivery. A delivery outlives
the server that wrote it and is sent by whichever server leads: at least
once, so a receiver drops repeats by the key.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import sqlalchemy as sa
import structlog

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
    forecast_conditions,
    node_conditions,
    queue_conditions,
)
from apportion.core.capacity import summarize
from apportion.core.health import Severity
from apportion.core.model import NodeState
from apportion.core.scheduling import JobState
from apportion.core.webhook import alert_payload, backoff_delays, delivery_id, encode_payload
from apportion.service.health_service import HealthService
from apportion.service.jobs import JobsService
from apportion.service.ledger_service import LedgerService
from apportion.service.unit_of_work import UnitOfWork
from apportion.store.schema import alert_deliveries, alerts

log = structlog.get_logger(__name__)

RESOLVED_KEPT = 1000
ATTEMPT_HEADER = "x-apportion-delivery-attempt"
"""1 for a delivery's first try; a try the server did not live to record (a
crash mid-request) is sent again with the same number."""


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
    uow: UnitOfWork
    ledger: LedgerService
    jobs: JobsService
    health: HealthService
    settings: AlertSettings = field(default_factory=AlertSettings)
    clock: Callable[[], float] = time.time
    book: AlertBook = field(default_factory=AlertBook)
    forecasts: list[ExhaustionForecast] = field(default_factory=list)
    """Set by the capacity planner; fed into the forecast_exhaustion rule."""
    is_leader: Callable[[], bool] = lambda: True
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _loaded: bool = False
    _sending: dict[str, asyncio.Task[bool]] = field(default_factory=dict)
    """Per receiver URL, its try in flight: one at a time, so it hears changes in order."""

    def conditions(self) -> list[Condition]:
        s = self.settings
        ledger = self.ledger
        nodes = ledger.nodes
        down = [n for n, node in nodes.items() if node.state is NodeState.DOWN]
        reports = {n: r for n, r in self.health.reports().items() if n in nodes}
        groups = summarize(((node, ledger.allocated(n)) for n, node in nodes.items()), "facility")
        return [
            *node_conditions(reports, down),
            *queue_conditions(
                self._queue_facts(),
                s.queue_wait_s,
                s.quota_near_share,
                wait_critical_s=s.queue_wait_critical_s,
            ),
            *capacity_conditions(groups, s.capacity_threshold, critical=s.capacity_critical),
            *forecast_conditions(
                self.forecasts, s.forecast_horizon_s, critical_s=s.forecast_critical_s
            ),
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
            QueueFacts(
                name,
                now - oldest[name] if name in oldest else None,
                dict(q.quota),
                usage.get(name, {}),
            )
            for name, q in self.jobs.queues.items()
        ]

    # -- the book, as stored ------------------------------------------------------------

    def load(self) -> None:
        """The open alerts as stored: a new leader carries them on."""
        with self.uow.engine.connect() as conn:
            rows = conn.execute(sa.select(alerts.c.body).where(alerts.c.state == "firing"))
            found = [_alert(body) for (body,) in rows]
        self.book = AlertBook({a.fingerprint: a for a in found})
        self._loaded = True

    def load_later(self) -> None:
        """Read the book from the store before the next evaluation (a new leader)."""
        self._loaded = False

    async def follow(self, events: Sequence[tuple[int, str, str, str]]) -> None:
        """Another server's alerts changed: read the open ones again."""
        if any(kind.startswith("alert.") for _, kind, _, _ in events) and not self.is_leader():
            await asyncio.to_thread(self.load)

    async def evaluate(self) -> list[AlertChange]:
        """One pass: apply the current conditions, record and send the changes."""
        if not self._loaded:
            await asyncio.to_thread(self.load)
        await self.health.sweep()
        book, changes = self.book.evaluate(self.conditions(), self.clock())
        if changes:
            await self._record(changes)
        self.book = book
        return changes

    async def _record(self, changes: list[AlertChange]) -> None:
        urls = self.settings.webhooks
        now = self.clock()

        def write(conn: sa.Connection) -> None:
            for change in changes:
                alert = change.alert
                _store(conn, change)
                self.uow.event(
                    conn, f"alert.{change.kind.value}", alert.fingerprint, alert.to_dict()
                )
                if urls:
                    body = encode_payload(alert_payload(change))
                    conn.execute(
                        alert_deliveries.insert(),
                        [
                            {
                                "key": _delivery_key(change, url),
                                "url": url,
                                "body": body,
                                "attempts": 0,
                                "next_at": now,
                                "state": "pending",
                                "created_at": now,
                            }
                            for url in urls
                        ],
                    )

        await self.uow.write(write)
        if urls:
            self._wake.set()
        for change in changes:
            log.info(
                "alert",
                change=change.kind.value,
                rule=change.alert.rule.value,
                severity=change.alert.severity.value,
                message=change.alert.message,
            )

    async def listing(self, *, state: str | None, severity: str | None) -> list[dict[str, Any]]:
        """Firing alerts, then the latest resolved ones, as stored."""
        result: list[dict[str, Any]] = await self.uow.read(
            lambda conn: _listing(conn, state, severity)
        )
        return result

    async def run_forever(self) -> None:
        """Evaluate while this server leads."""
        while True:
            if self.is_leader():
                try:
                    await self.evaluate()
                except Exception as exc:
                    log.exception("alerts_failed", error=repr(exc))
            else:
                self._loaded = False  # read the book again on becoming leader
            await asyncio.sleep(self.settings.interval_s)

    # -- deliveries ----------------------------------------------------------------------

    async def deliver_forever(self, poll_s: float = 0.5) -> None:
        """Send due webhook deliveries while this server leads."""
        rng = random.Random()
        async with httpx.AsyncClient(timeout=self.settings.webhook_timeout_s) as client:
            try:
                while True:
                    # Not wait_for, which on 3.11 can swallow a cancel (jobs/scheduling.py).
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(poll_s):
                            await self._wake.wait()
                    self._wake.clear()
                    if not self.is_leader() or not self.settings.webhooks:
                        continue
                    try:
                        await self.deliver_due(client, rng)
                    except Exception as exc:
                        log.warning("webhook_round_failed", error=repr(exc))
            finally:
                # A try cut short here is not recorded: the next leader sends it again.
                for task in list(self._sending.values()):
                    task.cancel()

    async def deliver_due(self, client: httpx.AsyncClient, rng: random.Random) -> int:
        """One round: start the oldest pending delivery of each receiver, if
        due and the receiver has no try in flight; return how many started.

        Each try runs as its own task, so a receiver that hangs until
        ``webhook_timeout_s`` holds up only its own deliveries, not the
        round (and with it every other receiver)."""
        # Receivers busy when the read starts are skipped even if their try
        # ends meanwhile: the read may predate that try's write, and its
        # head be the delivery just sent.
        busy = set(self._sending)
        now = self.clock()
        heads = await self.uow.read(_pending_heads)
        started = 0
        for head in heads:
            url = head["url"]
            if head["next_at"] > now or url in busy or url in self._sending:
                continue
            task = asyncio.create_task(self._deliver(client, head, rng))
            self._sending[url] = task
            task.add_done_callback(functools.partial(self._sent, url))
            started += 1
        return started

    def _sent(self, url: str, task: asyncio.Task[bool]) -> None:
        self._sending.pop(url, None)
        self._wake.set()  # its next delivery may be due
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("webhook_failed", url=url, error=repr(exc))

    async def _deliver(
        self, client: httpx.AsyncClient, head: dict[str, Any], rng: random.Random
    ) -> bool:
        attempts = head["attempts"] + 1
        error: str | None = None
        status = None
        try:
            r = await client.post(
                head["url"],
                content=head["body"],
                headers={
                    "content-type": "application/json",
                    "idempotency-key": head["key"],
                    ATTEMPT_HEADER: str(attempts),
                },
            )
            status = r.status_code
        except httpx.HTTPError as exc:
            error = repr(exc)[:500]
        now = self.clock()
        if status is not None and status < 500:
            # Only 2xx is a delivery; a redirect is not followed (the body
            # would go to a URL nobody configured), so 3xx ends it like 4xx.
            ok = status < 300
            values: dict[str, Any] = {
                "state": "delivered" if ok else "rejected",
                "attempts": attempts,
                "done_at": now,
                "last_error": None if ok else f"HTTP {status}",
            }
        elif attempts >= self.settings.webhook_attempts:
            values = {
                "state": "failed",
                "attempts": attempts,
                "done_at": now,
                "last_error": error or f"HTTP {status}",
            }
            log.warning("webhook_gave_up", url=head["url"], attempts=attempts)
        else:
            delay = backoff_delays(attempts, 0.5, 30.0, rng)[-1]
            values = {
                "attempts": attempts,
                "next_at": now + delay,
                "last_error": error or f"HTTP {status}",
            }
            log.info("webhook_retry", url=head["url"], attempt=attempts, error=values["last_error"])

        def write(conn: sa.Connection) -> None:
            conn.execute(
                alert_deliveries.update()
                .where(alert_deliveries.c.id == head["id"])
                .values(**values)
            )

        await self.uow.write(write)
        return values.get("state") == "delivered"


def _pending_heads(conn: sa.Connection) -> list[dict[str, Any]]:
    """Per receiver, its oldest pending delivery: later ones wait their turn,
    so a receiver hears one alert's changes in order."""
    first = (
        sa.select(alert_deliveries.c.url, sa.func.min(alert_deliveries.c.id).label("id"))
        .where(alert_deliveries.c.state == "pending")
        .group_by(alert_deliveries.c.url)
        .subquery()
    )
    rows = conn.execute(
        sa.select(alert_deliveries).join(first, alert_deliveries.c.id == first.c.id)
    ).all()
    return [dict(r._mapping) for r in rows]


def _delivery_key(change: AlertChange, url: str) -> str:
    return f"{delivery_id(change)}-{hashlib.sha256(url.encode()).hexdigest()[:12]}"


def _store(conn: sa.Connection, change: AlertChange) -> None:
    alert = change.alert
    body = alert.to_dict()
    if change.kind is ChangeKind.RAISED:
        conn.execute(
            alerts.insert().values(
                fingerprint=alert.fingerprint,
                state="firing",
                severity=alert.severity.value,
                started_at=alert.started_at,
                updated_at=change.at,
                body=body,
            )
        )
        return
    values: dict[str, Any] = {
        "severity": alert.severity.value,
        "updated_at": change.at,
        "body": body,
    }
    if change.kind is ChangeKind.RESOLVED:
        values.update(state="resolved", resolved_at=alert.resolved_at)
    conn.execute(
        alerts.update()
        .where(alerts.c.fingerprint == alert.fingerprint, alerts.c.state == "firing")
        .values(**values)
    )


def _alert(body: dict[str, Any]) -> Alert:
    return Alert(
        body["fingerprint"],
        AlertRule(body["rule"]),
        dict(body["labels"]),
        Severity(body["severity"]),
        body["message"],
        body.get("value"),
        body.get("threshold"),
        float(body["started_at"]),
        float(body["last_seen_at"]),
        body.get("resolved_at"),
    )


def _listing(conn: sa.Connection, state: str | None, severity: str | None) -> list[dict[str, Any]]:
    firing_rows = [
        body for (body,) in conn.execute(sa.select(alerts.c.body).where(alerts.c.state == "firing"))
    ]
    resolved = [
        body
        for (body,) in conn.execute(
            sa.select(alerts.c.body)
            .where(alerts.c.state == "resolved")
            .order_by(alerts.c.updated_at.desc(), alerts.c.id.desc())
            .limit(RESOLVED_KEPT)
        )
    ]
    firing = [
        a.to_dict()
        for a in AlertBook({b["fingerprint"]: _alert(b) for b in firing_rows}).open_alerts()
    ]
    rows = {"firing": firing, "resolved": resolved}.get(state or "", firing + resolved)
    return [a for a in rows if severity is None or a["severity"] == severity]
