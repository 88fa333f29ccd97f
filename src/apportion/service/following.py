"""Following the other servers: read their events, bring this server's caches level.

Every server writes its changes with events in the same transaction. A
server reads the events the others wrote since it last looked and hands them
to each cache: the ledger reloads the nodes they touched, the jobs cache the
jobs, the agents service the sessions, the alerts service its open alerts.

On PostgreSQL a transaction that writes events also NOTIFYs a channel
(``event_log.NOTIFY``): a listener wakes this loop at once, so a job
submitted to a follower reaches the leader's scheduler in milliseconds, not
at the next poll. The poll (``APPORTION_SYNC_INTERVAL``, 0.5 s) stays as the
floor: a notification can be lost with a connection, an event never.
LISTEN/NOTIFY was chosen over polling alone for that latency, and over a
broker (NATS) because it needs nothing beside the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import sqlalchemy as sa
import structlog

from apportion.service.ledger_service import LedgerService
from apportion.service.unit_of_work import UnitOfWork
from apportion.store.event_log import CHANNEL

log = structlog.get_logger(__name__)

Follower = Callable[[Sequence[tuple[int, str, str, str]]], Awaitable[None]]

MIN_GAP_S = 0.02
"""Syncs are at least this far apart: a burst of notifications is one read."""


class EventFollower:
    """Reads other servers' events and hands them to this server's caches."""

    def __init__(self, uow: UnitOfWork, ledger: LedgerService, followers: list[Follower], *,
                 interval_s: float = 0.5) -> None:
        self.uow = uow
        self.ledger = ledger
        self.followers = followers
        self.interval_s = interval_s
        self._wake = asyncio.Event()
        self._listener: _Listener | None = None

    def wake(self) -> None:
        self._wake.set()

    async def run_forever(self) -> None:
        if self.uow.engine.dialect.name == "postgresql":
            self._listener = _Listener(self.uow.engine.url, asyncio.get_running_loop(),
                                       self.wake)
            self._listener.start()
        try:
            while True:
                # Not wait_for, which on 3.11 can swallow a cancel (jobs/scheduling.py).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.interval_s):
                        await self._wake.wait()
                self._wake.clear()
                try:
                    await self.sync()
                except Exception as exc:
                    log.warning("sync_failed", error=repr(exc))
                await asyncio.sleep(MIN_GAP_S)
        finally:
            if self._listener is not None:
                self._listener.stop()

    async def sync(self) -> int:
        """One read of the events since the last; returns how many were others'."""
        events = await self.ledger.sync_from_store()
        if events:
            for follow in self.followers:
                await follow(events)
        return len(events)


class _Listener:
    """LISTEN on its own connection, in a thread; wakes the loop on NOTIFY."""

    def __init__(self, url: sa.URL, loop: asyncio.AbstractEventLoop,
                 wake: Callable[[], None]) -> None:
        self.url = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self.loop = loop
        self.wake = wake
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="apportion-listen", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        import psycopg

        while not self._stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._call(self.wake)  # anything missed while not listening
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=1.0, stop_after=1):
                            self._call(self.wake)
            except Exception as exc:
                log.info("listen_reconnect", error=repr(exc))
                time.sleep(1.0)

    def _call(self, fn: Callable[[], Any]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed
            self.loop.call_soon_threadsafe(fn)
