"""Alerts are rows and webhook deliveries an outbox: a restart keeps each open
alert with its ``started_at`` and sends no second webhook for it (issue 11).
A real server and a real HTTP receiver on loopback; the webhook deliveries'
own rules (order, retries, 4xx, timeouts, crashes) are in test_webhooks.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2e.cluster import wait_for
from server.helpers import config_env
from support import ServerProcess, WebhookReceiver

CONFIG = """
[alerts]
interval_s = 0.2
capacity_threshold = 0.5
capacity_critical = 0.99
webhooks = ["{url}"]
webhook_attempts = 4
webhook_timeout_s = 1.0
"""


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver()
    try:
        yield r
    finally:
        r.close()


def _server(
    tmp_path: Path, receiver: WebhookReceiver, port: int | None = None, token: str | None = None
) -> ServerProcess:
    proc = ServerProcess(tmp_path, extra_env=config_env(tmp_path, CONFIG.format(url=receiver.url)))
    if port is not None:
        proc.port = port
    if token is not None:
        proc.token = token
    return proc.start()


def _capacity_alert(api: httpx.Client) -> dict[str, Any] | None:
    rows = api.get("/api/v1/alerts").json()["alerts"]
    return next((a for a in rows if a["rule"] == "capacity_utilization"), None)


def _events(receiver: WebhookReceiver, event: str) -> list[Any]:
    return [b for b in receiver.bodies() if b["event"] == event]


def test_an_open_alert_survives_a_restart_without_a_second_webhook(
    tmp_path: Path, receiver: WebhookReceiver
) -> None:
    receiver.answers = [503, 500]  # the first delivery is retried twice
    server = _server(tmp_path, receiver)
    try:
        with server.client() as api:
            api.post(
                "/api/v1/nodes",
                json={"name": "n1", "resources": {"cpu": "4"}, "labels": {"facility": "f1"}},
            )
            alloc = api.post("/api/v1/allocations", json={"resources": {"cpu": "3"}}).json()
            raised = wait_for("the capacity alert", lambda: _capacity_alert(api), 20)
            wait_for("its delivery, after two retries", lambda: len(receiver.received) == 3, 20)
        assert raised["status"] == "firing"
        first = receiver.received[0]
        assert [r.headers["idempotency-key"] for r in receiver.received] == [
            first.headers["idempotency-key"]
        ] * 3
        assert [(r.attempt, r.status) for r in receiver.received] == [(1, 503), (2, 500), (3, 200)]
        assert len({r.body for r in receiver.received}) == 1  # byte-identical retries
        server.stop()
        server = _server(tmp_path, receiver, port=server.port, token=server.token)
        with server.client() as api:
            assert _capacity_alert(api)["started_at"] == raised["started_at"]
            api.delete(f"/api/v1/allocations/{alloc['id']}")
            wait_for("the resolved delivery", lambda: _events(receiver, "alert.resolved"), 20)
            resolved = api.get("/api/v1/alerts", params={"state": "resolved"}).json()["alerts"]
        assert [(a["rule"], a["started_at"]) for a in resolved] == [
            ("capacity_utilization", raised["started_at"])
        ]
        # Evaluations ran after the restart (the resolve proves it) and raised nothing new.
        assert len({b["id"] for b in _events(receiver, "alert.raised")}) == 1
        assert (
            _events(receiver, "alert.resolved")[0]["alert"]["fingerprint"] == raised["fingerprint"]
        )
    finally:
        server.stop()
