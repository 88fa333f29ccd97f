"""What tasks leave behind: their logs and checkpoints, reachable from every server.

Logs are rows of ``task_logs`` (one per chunk an agent shipped), written as
units of the group committer so many agents' chunks share a commit; a task
keeps at most ``APPORTION_LOG_MAX`` bytes (default 16 MiB, both streams
together) and what passes the cap is dropped and said so. Checkpoints are
blobs (``store/blobs.py``): in the database up to ``APPORTION_CHECKPOINT_MAX``
(default 256 MiB), or in an S3-compatible bucket when ``APPORTION_BLOB_URL``
names one (default cap there 1 GiB). An upload is streamed to a temporary
file under the cap, then stored; the checkpoint is served only to the node
that now runs the task resuming from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from apportion.exceptions import BodyTooLarge, InvalidInput, NotFound
from apportion.service.jobs import JobsService
from apportion.service.unit_of_work import UnitOfWork
from apportion.store.blobs import BlobStore
from apportion.store.schema import task_logs

LOG_STREAMS = ("stdout", "stderr")
MAX_LOG_READ = 1 << 20
MAX_LOG_CHUNK = 4 << 20


@dataclass(frozen=True, slots=True)
class FileLimits:
    log_max: int = 16 << 20
    checkpoint_max: int = 256 << 20


@dataclass(frozen=True, slots=True)
class LogRead:
    data: bytes
    end: int
    """The offset after ``data``."""
    size: int
    """Bytes stored for the stream."""
    truncated: bool
    """The task wrote more than the cap; the rest was not kept."""


class TaskFiles:
    """Task logs and checkpoints over the store."""

    def __init__(self, uow: UnitOfWork, jobs: JobsService, blobs: BlobStore,
                 limits: FileLimits, spool_dir: Path) -> None:
        self.uow = uow
        self.jobs = jobs
        self.blobs = blobs
        self.limits = limits
        self.spool_dir = spool_dir

    # -- logs ------------------------------------------------------------------------------

    def _task_on(self, node: str, task_id: str) -> str:
        """The job of a task ``node`` runs; NotFound otherwise."""
        found = self.jobs.find_task(task_id)
        if found is None or found[1].node != node:
            raise NotFound(f"task {task_id} is not running on node {node}", id=task_id)
        return found[1].job_id

    async def append_log(self, node: str, task_id: str, stream: str, offset: int,
                         data: bytes) -> dict[str, int | bool]:
        """Store log bytes the agent read at ``offset``; resending is harmless."""
        _check_stream(stream)
        if len(data) > MAX_LOG_CHUNK:
            raise BodyTooLarge(f"a log chunk is at most {MAX_LOG_CHUNK} bytes",
                               limit=MAX_LOG_CHUNK)
        self._task_on(node, task_id)
        cap = self.limits.log_max

        def write(conn: sa.Connection) -> dict[str, int | bool]:
            sizes = _sizes(conn, task_id)
            size = sizes.get(stream, 0)
            rest = data[size - offset:] if offset < size else data
            room = max(0, cap - sum(sizes.values()))
            kept = rest[:room]
            if kept:
                conn.execute(task_logs.insert().values(task_id=task_id, stream=stream,
                                                       offset=size, data=kept))
            return {"size": size + len(kept), "truncated": len(kept) < len(rest)}

        result: dict[str, int | bool] = await self.uow.write_unit(write)
        return result

    async def read_log(self, task_id: str, stream: str, offset: int, limit: int) -> LogRead:
        _check_stream(stream)
        limit = min(limit, MAX_LOG_READ)

        def read(conn: sa.Connection) -> LogRead:
            rows = conn.execute(sa.select(task_logs.c.offset, task_logs.c.data).where(
                task_logs.c.task_id == task_id, task_logs.c.stream == stream,
                task_logs.c.offset >= offset - MAX_LOG_CHUNK,
                task_logs.c.offset < offset + limit).order_by(task_logs.c.offset)).all()
            out = bytearray()
            for start, chunk in rows:
                chunk = bytes(chunk)
                if start + len(chunk) <= offset:
                    continue
                out += chunk[max(0, offset - start):]
            data = bytes(out[:limit])
            sizes = _sizes(conn, task_id)
            return LogRead(data, offset + len(data), sizes.get(stream, 0),
                           sum(sizes.values()) >= self.limits.log_max)

        result: LogRead = await self.uow.read(read)
        return result

    # -- checkpoints ------------------------------------------------------------------------

    @staticmethod
    def checkpoint_key(job_id: str, task_id: str) -> str:
        return f"checkpoints/{_safe(job_id)}/{_safe(task_id)}.tar"

    async def save_checkpoint(self, node: str, task_id: str,
                              chunks: AsyncIterator[bytes]) -> tuple[str, int]:
        """Stream an agent's checkpoint to the blob store, under the cap."""
        job_id = self._task_on(node, task_id)
        key = self.checkpoint_key(job_id, task_id)
        cap = self.limits.checkpoint_max
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.spool_dir, suffix=".part")
        path = Path(name)
        try:
            size = 0
            with os.fdopen(fd, "wb") as fh:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > cap:
                        raise BodyTooLarge(f"a checkpoint is at most {cap} bytes "
                                           "(APPORTION_CHECKPOINT_MAX)", limit=cap)
                    await asyncio.to_thread(fh.write, chunk)
            await asyncio.to_thread(self.blobs.put_file, key, path)
        finally:
            with contextlib.suppress(OSError):
                path.unlink()
        return key, size

    async def has_checkpoint(self, key: str) -> bool:
        return await asyncio.to_thread(self.blobs.exists, key)

    async def checkpoint_for(self, node: str | None, task_id: str) -> AsyncIterator[bytes]:
        """The checkpoint ``task_id`` left, for the task on ``node`` that
        resumes from it (``node`` None: an admin, who may read any)."""
        found = None
        if node is not None:
            found = next((t for lj, t in self.jobs.cache.tasks_on(node)
                          if lj.checkpoints.get(t.index) == task_id), None)
            if found is None:
                raise NotFound(f"no task on node {node} resumes from task {task_id}",
                               id=task_id)
        stored = await self.uow.read(lambda c: _checkpoint_of(c, task_id))
        if stored is None:
            raise NotFound(f"task {task_id} left no checkpoint", id=task_id)
        parts = await asyncio.to_thread(self.blobs.chunks, stored)
        if parts is None:
            raise NotFound(f"checkpoint of task {task_id} is missing from the store",
                           id=task_id)
        return _aiter(parts)


async def _aiter(parts: object) -> AsyncIterator[bytes]:
    iterator = iter(parts)  # type: ignore[call-overload]
    while True:
        chunk = await asyncio.to_thread(next, iterator, None)
        if chunk is None:
            return
        yield chunk


def _checkpoint_of(conn: sa.Connection, task_id: str) -> str | None:
    from apportion.store import jobs_tables as jt

    row = jt.load_task(conn, task_id)
    return row.checkpoint if row is not None else None


def _sizes(conn: sa.Connection, task_id: str) -> dict[str, int]:
    """Bytes stored per stream (the end of each stream's last chunk)."""
    out = {}
    for stream in LOG_STREAMS:
        last = conn.execute(sa.select(task_logs.c.offset, sa.func.length(task_logs.c.data))
                            .where(task_logs.c.task_id == task_id, task_logs.c.stream == stream)
                            .order_by(task_logs.c.offset.desc()).limit(1)).first()
        if last is not None:
            out[stream] = int(last[0]) + int(last[1])
    return out


def _check_stream(stream: str) -> None:
    if stream not in LOG_STREAMS:
        raise InvalidInput(f"stream: use {' or '.join(LOG_STREAMS)}", field="stream")


def _safe(name: str) -> str:
    """A path component from an id (ids are hex and dashes; refuse others)."""
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise InvalidInput(f"{name!r} is not a valid id", field="id")
    return name
