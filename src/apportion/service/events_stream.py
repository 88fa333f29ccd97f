"""The event stream: every state change in the store, followed live.

Every use case records its state changes as rows of the event log
(``store/event_log.py``) in the same transaction as the change, and ids are
handed out in commit order (SQLite has one writer; on PostgreSQL an advisory
lock is held from INSERT to commit). So a reader that remembers the last id it
saw and asks for what came after never misses an event and never sees one
twice, whichever server wrote it. The :class:`EventHub` is that reader for
this process: one task tails the log and keeps the newest events in memory;
any number of followers (an SSE client, the NATS publisher, the metrics
counters) each keep their own cursor and read from that memory, or from the
store when they are further behind than the memory reaches. A slow follower
therefore never holds up the others or the hub: it just reads from further
back, and a follower that reconnects with ``Last-Event-ID`` resumes exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import sqlalchemy as sa
import structlog

from apportion.core.records import Event
from apportion.store import event_log

log = structlog.get_logger(__name__)

PAGE = 1000
"""Events read from the store at once."""

Listener = Callable[[Event], None]


def event_dict(event: Event) -> dict[str, Any]:
    """The public form of an event (SSE ``data``, NATS payload, CLI ``--json``)."""
    return {"id": event.id, "kind": event.kind, "subject": event.subject,
            "origin": event.origin, "at": event.at, "data": event.data}


class EventHub:
    """Tails the event log; followers read from its memory or the store.

    ``listeners`` are called in the loop, in id order, once per new event
    (the metrics counters use this); they must be quick and must not raise.
    """

    def __init__(self, engine: sa.Engine, *, poll_s: float = 0.2, keep: int = 10_000) -> None:
        self.engine = engine
        self.poll_s = poll_s
        self.recent: deque[Event] = deque(maxlen=keep)
        self.last_id = 0
        self.listeners: list[Listener] = []
        self.followers = 0
        self._floor = 0
        """Memory holds every event the tail read with an id above this."""
        self._changed = asyncio.Event()
        self._kick = asyncio.Event()

    # -- the tail -----------------------------------------------------------

    def start_at_end(self) -> None:
        """Follow from the newest stored event (call before ``run_forever``)."""
        with self.engine.connect() as conn:
            self.last_id = event_log.last_event_id(conn)
        self._floor = self.last_id

    def kick(self) -> None:
        """Something was written: look now instead of at the next poll."""
        self._kick.set()

    async def run_forever(self) -> None:
        while True:
            try:
                got = await self.poll()
            except Exception as exc:
                log.warning("events_tail_failed", error=repr(exc))
                got = 0
            if got < PAGE:
                # Not wait_for, which on 3.11 can swallow a cancel (jobs/scheduling.py).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_s):
                        await self._kick.wait()
                self._kick.clear()

    async def poll(self) -> int:
        """Read what was committed since the last look; returns how many."""
        events = await self._read(self.last_id, PAGE)
        if not events:
            return 0
        for event in events:
            if len(self.recent) == self.recent.maxlen:
                self._floor = self.recent[0].id
            self.recent.append(event)
            for listener in self.listeners:
                try:
                    listener(event)
                except Exception as exc:  # a broken listener must not stop the stream
                    log.warning("event_listener_failed", kind=event.kind, error=repr(exc))
        self.last_id = events[-1].id
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        return len(events)

    async def _read(self, after: int, limit: int) -> list[Event]:
        def read() -> list[Event]:
            with self.engine.connect() as conn:
                return event_log.events_after(conn, after, limit)

        return await asyncio.to_thread(read)

    # -- followers ------------------------------------------------------------

    async def follow(self, after: int | None = None, *,
                     idle_s: float | None = None) -> AsyncIterator[Event | None]:
        """Every event with an id above ``after`` (default: from now on), in
        order, forever. Events older than memory reaches come from the store.
        With ``idle_s``, ``None`` is yielded after that long without events
        (an SSE keep-alive)."""
        cursor = self.last_id if after is None else max(0, after)
        self.followers += 1
        try:
            while True:
                if cursor >= self._floor:
                    batch = self._from_memory(cursor)
                else:
                    batch = await self._read(cursor, PAGE)
                    if not batch:  # nothing stored up to the floor: memory has the rest
                        cursor = self._floor
                        continue
                if not batch:
                    changed = self._changed
                    if self.last_id <= cursor:
                        try:
                            async with asyncio.timeout(idle_s):  # see above: not wait_for
                                await changed.wait()
                        except TimeoutError:
                            yield None
                    continue
                for event in batch:
                    yield event
                cursor = batch[-1].id
        finally:
            self.followers -= 1

    def _from_memory(self, cursor: int) -> list[Event]:
        """Events after ``cursor`` (at or above the floor), oldest first.

        Memory holds every event the tail read after ``_floor``, so this is
        complete; followers are usually a few events behind, so the scan
        starts from the newest end."""
        found: list[Event] = []
        for event in reversed(self.recent):
            if event.id <= cursor:
                break
            found.append(event)
        found.reverse()
        return found[:PAGE]
