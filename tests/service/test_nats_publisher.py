"""Publishing to NATS (``service/nats_publisher.py``): this server's own
events, in order, each with its id as the message id (JetStream drops a
retried duplicate), retried until acknowledged; other servers' events are
theirs to publish. The JetStream context is a fake handed in, as
``run_forever`` hands in the connected one; tests/server/test_events.py
runs against a real NATS."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson

from apportion.service.events_stream import EventHub
from apportion.service.nats_publisher import NatsPublisher, NatsSettings, subject_for
from apportion.service.wiring import Services
from support import wait_until


class FakeJetStream:
    """Acknowledges every publish but the first ``failures``."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.sent: list[tuple[str, dict[str, Any], dict[str, str]]] = []

    async def publish(
        self, subject: str, payload: bytes, *, timeout: float, headers: dict[str, str]
    ) -> None:
        if self.failures:
            self.failures -= 1
            raise TimeoutError("no JetStream answer")
        self.sent.append((subject, orjson.loads(payload), headers))


def test_own_events_are_published_in_order_and_retried_until_acknowledged(
    servers: Callable[..., Services],
) -> None:
    a, b = servers("a"), servers("b")
    hub = EventHub(a.uow.engine)
    hub.start_at_end()
    publisher = NatsPublisher(
        hub, NatsSettings("nats://x", "apportion.events"), origin=a.uow.origin
    )
    js = FakeJetStream(failures=1)

    async def write(server: Services, kind: str, subject: str) -> None:
        await server.uow.write(lambda conn: server.uow.event(conn, kind, subject, {"n": 1}))

    async def scenario() -> None:
        running = asyncio.ensure_future(publisher._publish_from(js, hub.last_id))
        try:
            await write(a, "node.registered", "n1")
            await write(b, "node.registered", "n2")  # b's to publish
            await write(a, "allocation.granted", "n1")
            while await hub.poll():
                pass
            await wait_until("two publishes", lambda: publisher.published == 2)
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)

    asyncio.run(scenario())
    assert [(subject, body["subject"], headers) for subject, body, headers in js.sent] == [
        ("apportion.events.node.registered", "n1", {"Nats-Msg-Id": "1"}),
        ("apportion.events.allocation.granted", "n1", {"Nats-Msg-Id": "3"}),
    ]
    assert js.sent[0][1]["data"] == {"n": 1}


def test_settings_and_subjects() -> None:
    assert NatsSettings.of(None, "x") is None
    assert NatsSettings.of("nats://h:4222", "acme.events.") == NatsSettings(
        "nats://h:4222", "acme.events"
    )
    assert subject_for("apportion.events", "job.state") == "apportion.events.job.state"
    assert subject_for("p", "odd kind>*") == "p.odd_kind__"
