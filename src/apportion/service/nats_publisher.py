"""Optional: publish every state change to NATS JetStream.

With ``APPORTION_NATS_URL`` set (and the ``nats`` extra installed), each
event this server records is published to ``apportion.events.<kind>``
(``APPORTION_NATS_SUBJECT_PREFIX`` changes the prefix), the payload being the
event as the SSE stream sends it. The message id header (``Nats-Msg-Id``) is
the event id, so JetStream drops a duplicate when a publish is retried.

The publisher is one follower of the :class:`EventHub`: it keeps its own
cursor and retries an event, with backoff, until JetStream acknowledges it,
so a NATS outage or a missing stream delays publishing but loses nothing
while the server runs, and never slows the API. The stream itself is the
operator's to create (``nats stream add``, subjects ``apportion.events.>``).
Each server publishes the events it wrote; events written while no server
was publishing (a crash between commit and publish) are in the store and
the SSE stream, not re-sent to NATS.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import orjson
import structlog

from apportion.core.records import Event
from apportion.service.events_stream import EventHub, event_dict

log = structlog.get_logger(__name__)

DEFAULT_PREFIX = "apportion.events"


@dataclass(frozen=True)
class NatsSettings:
    url: str
    prefix: str = DEFAULT_PREFIX
    timeout_s: float = 5.0

    @classmethod
    def of(cls, url: str | None, prefix: str | None) -> NatsSettings | None:
        """From APPORTION_NATS_URL and APPORTION_NATS_SUBJECT_PREFIX; None: off."""
        if not url:
            return None
        return cls(url, (prefix or DEFAULT_PREFIX).rstrip("."))


def subject_for(prefix: str, kind: str) -> str:
    """``apportion.events.allocation.granted``; characters NATS reserves in
    subjects (space, ``*``, ``>``) never occur in kinds, but are replaced anyway."""
    safe = "".join("_" if c in " *>\t\r\n" else c for c in kind)
    return f"{prefix}.{safe}"


class NatsPublisher:
    """Publishes this server's events to JetStream, in order, at least once."""

    def __init__(self, hub: EventHub, settings: NatsSettings, *, origin: str) -> None:
        self.hub = hub
        self.settings = settings
        self.origin = origin
        self.published = 0
        self.connected = False

    async def run_forever(self) -> None:
        try:
            import nats
        except ImportError:
            log.error("nats_unavailable", error="APPORTION_NATS_URL is set but nats-py is not "
                      "installed; install apportion[nats]")
            return
        after = self.hub.last_id
        delay = 0.5
        while True:
            try:
                nc = await nats.connect(self.settings.url, max_reconnect_attempts=-1,
                                        reconnect_time_wait=1, connect_timeout=5,
                                        name=f"apportion-{self.origin}")
            except Exception as exc:
                log.warning("nats_connect_failed", url=self.settings.url, error=repr(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            self.connected = True
            log.info("nats_connected", url=self.settings.url, prefix=self.settings.prefix)
            try:
                after = await self._publish_from(nc.jetstream(), after)
            finally:
                self.connected = False
                await nc.close()

    async def _publish_from(self, js: Any, after: int) -> int:
        async for event in self.hub.follow(after):
            if event is None:
                continue
            if event.origin == self.origin:
                await self._publish(js, event)
            after = event.id
        return after

    async def _publish(self, js: Any, event: Event) -> None:
        subject = subject_for(self.settings.prefix, event.kind)
        payload = orjson.dumps(event_dict(event))
        delay = 0.2
        while True:
            try:
                await js.publish(subject, payload, timeout=self.settings.timeout_s,
                                 headers={"Nats-Msg-Id": str(event.id)})
                self.published += 1
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Not ``event=``: structlog's message is that argument, and the
                # clash raised a TypeError that ended the publisher for good.
                log.warning("nats_publish_retry", subject=subject, event_id=event.id,
                            error=repr(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
