"""Which server decides: one leader at a time, with an epoch that fences.

Every server answers reads and accepts writes, but decisions that must be
made once for the cluster (the scheduling cycle, lost nodes, health and
alerts, scaling) are made by the leader alone. A server campaigns for a lock
that only one process can hold, and while it holds the lock it leads:

- PostgreSQL: a session advisory lock on a connection of its own. When the
  leader's process dies, its connection closes and PostgreSQL frees the lock
  at once; when its host falls silent, TCP keepalives set on that session
  (a fraction of ``APPORTION_LEADER_TIMEOUT``) end it within the timeout. A
  leader that cannot confirm its session within half the timeout steps down
  by itself.
- SQLite: an exclusive ``flock`` on a file beside the database. One machine,
  one leader; a second server on the same file serves as a follower.

On winning, the leader increments ``cluster_leader.epoch`` and carries the
new value. Every decision it commits checks that epoch inside its own
transaction (``Tx.fence``), reading the row FOR SHARE: a deposed leader's
late write finds a newer epoch and is refused by the database, whatever its
own memory still believes.

Servers also keep a row in ``servers`` (seen every campaign round), which
``GET /api/v1/cluster`` and ``apportion servers`` show.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa
import structlog

from apportion.store.schema import cluster_leader, servers

log = structlog.get_logger(__name__)

LEADER_LOCK = 7263516
"""PostgreSQL advisory lock key of leadership."""
VERSION = "0.1.0"


class LeaderLock(Protocol):
    """The lock only one server can hold; blocking calls, run in a thread."""

    def try_acquire(self) -> bool: ...
    def still_held(self) -> bool: ...
    def release(self) -> None: ...


class PostgresLeaderLock:
    """A session advisory lock on a dedicated connection."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._conn: Any = None

    def _connect(self) -> Any:
        import psycopg

        # Keepalives and the user timeout make PostgreSQL end this session
        # (and free the lock) within the leader timeout when the host falls
        # silent; a closed process frees it at once.
        idle = max(1, int(self.timeout_s / 3))
        return psycopg.connect(
            self.url, autocommit=True, connect_timeout=max(1, int(self.timeout_s)),
            keepalives=1, keepalives_idle=idle, keepalives_interval=1, keepalives_count=2,
            tcp_user_timeout=int(self.timeout_s * 1000),
            options=f"-c tcp_keepalives_idle={idle} -c tcp_keepalives_interval=1 "
                    "-c tcp_keepalives_count=2",
        )

    def try_acquire(self) -> bool:
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
        row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK,)).fetchone()
        return bool(row and row[0])

    def still_held(self) -> bool:
        if self._conn is None or self._conn.closed:
            return False
        row = self._conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND pid = pg_backend_pid() AND objid = %s", (LEADER_LOCK,)).fetchone()
        return bool(row and row[0])

    def release(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None


class FileLeaderLock:
    """An exclusive flock on a file beside the SQLite database."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def still_held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class ProcessLeaderLock:
    """An in-memory SQLite database belongs to one process: it always leads."""

    def try_acquire(self) -> bool:
        return True

    def still_held(self) -> bool:
        return True

    def release(self) -> None:
        return None


def leader_lock_for(engine: sa.Engine, timeout_s: float) -> LeaderLock:
    url = engine.url
    if url.get_backend_name() == "sqlite":
        if not url.database or url.database == ":memory:":
            return ProcessLeaderLock()
        return FileLeaderLock(Path(f"{url.database}.leader.lock"))
    plain = url.set(drivername="postgresql").render_as_string(hide_password=False)
    return PostgresLeaderLock(plain, timeout_s)


@dataclass(frozen=True, slots=True)
class LeaderInfo:
    server_id: str | None
    epoch: int
    since: float | None


OnChange = Callable[[int | None], Awaitable[None]]
"""Called with the new epoch when this server is elected, None when deposed."""


class Leadership:
    """This server's campaign, and what it knows of the leader."""

    def __init__(self, engine: sa.Engine, lock: LeaderLock, *, server_id: str,
                 url: str | None, timeout_s: float = 5.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.lock = lock
        self.server_id = server_id
        self.url = url
        self.timeout_s = timeout_s
        self.clock = clock
        self.epoch: int | None = None
        self.since: float | None = None
        self.started_at = clock()
        self.listeners: list[OnChange] = []
        self._stopping = False

    @property
    def is_leader(self) -> bool:
        return self.epoch is not None

    @property
    def round_s(self) -> float:
        """How often a follower tries for the lock and the leader checks it."""
        return min(1.0, max(0.1, self.timeout_s / 5))

    async def run_forever(self) -> None:
        while not self._stopping:
            try:
                await self.campaign_round()
            except Exception as exc:
                log.warning("leadership_round_failed", error=repr(exc))
                if self.is_leader:
                    await self._depose("the lock could not be checked")
            await asyncio.sleep(self.round_s)

    async def campaign_round(self) -> None:
        """Win, keep or lose the lock once; note this server as seen."""
        if not self.is_leader:
            if await asyncio.to_thread(self.lock.try_acquire):
                await self._elect(*await asyncio.to_thread(self._take_epoch))
        else:
            try:
                # Not wait_for: on 3.11 it can swallow a stop's cancel that
                # lands as the check ends, and the campaign would go on.
                async with asyncio.timeout(self.timeout_s / 2):
                    held = await asyncio.to_thread(self.lock.still_held)
            except TimeoutError:
                held = False
            if not held:
                await self._depose("the lock was lost")
        await asyncio.to_thread(self._seen)

    async def _elect(self, epoch: int, since: float) -> None:
        self.epoch, self.since = epoch, since
        log.info("leader_elected", server_id=self.server_id, epoch=epoch)
        for listener in list(self.listeners):
            await listener(epoch)

    async def _depose(self, why: str) -> None:
        log.warning("leader_deposed", server_id=self.server_id, epoch=self.epoch, why=why)
        self.epoch, self.since = None, None
        await asyncio.to_thread(self.lock.release)
        for listener in list(self.listeners):
            await listener(None)

    async def stop(self) -> None:
        """Give up leadership at shutdown so another server takes over at once."""
        self._stopping = True
        if self.is_leader:
            await self._depose("the server is stopping")
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self._seen, stopped=True)

    # -- the store -----------------------------------------------------------

    def _take_epoch(self) -> tuple[int, float]:
        since = self.clock()
        with self.engine.begin() as conn:
            conn.execute(cluster_leader.update().where(cluster_leader.c.id == 1).values(
                epoch=cluster_leader.c.epoch + 1, server_id=self.server_id, since=since))
            return int(conn.execute(sa.select(cluster_leader.c.epoch).where(
                cluster_leader.c.id == 1)).scalar_one()), since

    def _seen(self, stopped: bool = False) -> None:
        now = self.clock()
        values = {"url": self.url, "version": VERSION, "last_seen": now,
                  "stopped_at": now if stopped else None}
        with self.engine.begin() as conn:
            hit = conn.execute(servers.update().where(servers.c.id == self.server_id)
                               .values(values))
            if hit.rowcount == 0:
                conn.execute(servers.insert().values(id=self.server_id,
                                                     started_at=self.started_at, **values))

    def leader(self, conn: sa.Connection) -> LeaderInfo:
        row = conn.execute(sa.select(cluster_leader).where(cluster_leader.c.id == 1)).first()
        if row is None:
            return LeaderInfo(None, 0, None)
        return LeaderInfo(row.server_id, int(row.epoch), row.since)

    def cluster(self) -> dict[str, Any]:
        """The servers seen in the last hour and the leader: ``GET /api/v1/cluster``."""
        now = self.clock()
        alive_within = max(3.0, 3 * self.round_s)
        with self.engine.connect() as conn:
            leader = self.leader(conn)
            rows = conn.execute(sa.select(servers).where(servers.c.last_seen > now - 3600)
                                .order_by(servers.c.started_at)).all()
        # The leader row names the last server elected; it leads only while alive.
        live = {r.id for r in rows if r.stopped_at is None and now - r.last_seen <= alive_within}
        leading = leader.server_id if leader.server_id in live else None
        return {
            "leader": {"server_id": leading, "epoch": leader.epoch,
                       "since": leader.since if leading else None},
            "this_server": self.server_id,
            "servers": [{"id": r.id, "url": r.url, "version": r.version,
                         "started_at": r.started_at, "last_seen": r.last_seen,
                         "alive": r.id in live, "leader": r.id == leading}
                        for r in rows],
        }
