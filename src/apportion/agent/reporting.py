"""What the agent sends the server: the node's registration (retried until
the server answers; a spent join token is exchanged for the agent token kept
in the work dir), a heartbeat with live usage every ``heartbeat_s``, every
task transition as a report sent until the server answers (an exit first
ships the last log bytes and any checkpoint), and new log bytes every
``log_interval_s``. The server's answers move the time of last contact that
the fence reads.

``Reporting`` is the sending half of ``Agent`` (``main.py``), which creates
the state declared below and runs these loops beside its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import structlog

from apportion.agent import checkpoint, fence
from apportion.agent.checkpoint import CheckpointError
from apportion.agent.config import AgentConfig
from apportion.agent.discovery import Discovery
from apportion.agent.gpu_isolation import GpuIsolation
from apportion.agent.limits import LimitSupport
from apportion.agent.local_task import LocalTask
from apportion.agent.protocol import TaskUpdate
from apportion.agent.runner import Runner
from apportion.agent.transport import retry_delay
from apportion.agent.usage import XidCounter, sample_usage
from apportion.async_client import AsyncClient, ClientError, TransportError
from apportion.core.resources import format_vector
from apportion.nvml import NvmlModule

log = structlog.get_logger(__name__)

VERSION = "0.1.0"
LOG_STREAMS = ("stdout", "stderr")
LOG_CHUNK = 1 << 20
CONTACT_WRITE_S = fence.POLL_S
"""The contact file is written at most this often: a rename per server
answer was a quarter of a busy agent's CPU, and the fence reads the file only
this often anyway (it may then act up to this much early: the safe side)."""
TOKEN_FILE = "agent.token"
"""In the work dir: the agent token a one-time join token was exchanged for,
used instead of the configured token from then on (mode 600)."""


class Reporting:
    """Registration, heartbeats, task reports and log shipping for ``Agent``."""

    config: AgentConfig
    id: str
    client: AsyncClient
    nvml: NvmlModule | None
    runner: Runner | None
    support: LimitSupport | None
    gpu: GpuIsolation
    discovery: Discovery | None
    registered: asyncio.Event
    last_contact: float
    contact_written: float = 0.0
    """When the contact file was last written (monotonic)."""
    pending: dict[str, TaskUpdate]
    """Per task, the report still to be delivered."""
    sender: asyncio.Task[None] | None
    """The one loop sending pending reports, while there are any."""
    shipped: dict[tuple[str, str], int]
    """Per task and stream, how many log bytes the server has."""
    xids: XidCounter | None

    # -- registration -----------------------------------------------------------

    def _node_body(self) -> dict[str, Any]:
        d, s = self.discovery, self.support
        assert d is not None and s is not None
        specs = {k: v for k, v in d.specs.items() if v is not None}
        specs["limits"] = {"mode": s.mode.value, "reason": s.reason}
        specs["isolation"] = self.config.isolation.spec()
        specs["gpu_isolation"] = self.gpu.spec()
        specs["reserved"] = dict(d.reserved)
        return {
            "name": self.config.name,
            # Canonical text: a bare JSON integer would be read as whole cores.
            "resources": format_vector(d.resources),
            "devices": {r: [_device_body(dev) for dev in ds] for r, ds in d.devices.items()},
            "labels": {**d.labels, **self.config.labels},
            "specs": specs,
        }

    def _agent_body(self) -> dict[str, Any]:
        assert self.support is not None
        return {"id": self.id, "version": VERSION, "heartbeat_s": self.config.heartbeat_s,
                "stop_after_disconnect_s": self.config.stop_after_disconnect_s,
                "limit_mode": self.support.mode.value, "limit_reason": self.support.reason[:1000],
                "work_dir": str(self.config.work_dir)}

    async def _register(self) -> None:
        """Register (or refresh) the node; retried until the server answers."""
        node, agent = self._node_body(), self._agent_body()
        delay = 0.1
        first = time.monotonic()
        while True:
            started = time.monotonic()
            try:
                answer = await self.client.register_agent(node, agent)
            except TransportError as exc:
                # A server still starting (apportion up) is not worth a warning.
                quiet = started - first < 10
                (log.debug if quiet else log.warning)("register_failed", error=repr(exc))
            except ClientError as exc:
                log.error("register_refused", status=exc.status, body=exc.body)
            else:
                self._contact(started)
                self._adopt_token(answer)
                self.registered.set()
                return
            await asyncio.sleep(delay)
            delay = retry_delay(delay)

    def _adopt_token(self, answer: Mapping[str, Any]) -> None:
        """A join token was spent: keep the agent token the server gave for it."""
        token = answer.get("agent_token")
        if not isinstance(token, str) or not token:
            return
        self.client.set_token(token)
        path = self.config.work_dir / TOKEN_FILE
        tmp = path.with_suffix(".tmp")
        with contextlib.suppress(OSError):
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(token)
        tmp.replace(path)
        log.info("joined", node=self.config.name, pool=answer.get("pool"))

    async def _reregister(self) -> None:
        self.registered.clear()
        await self._register()

    def _contact(self, started: float) -> None:
        """The server answered a request sent at ``started`` (monotonic)."""
        if started > self.last_contact:
            self.last_contact = started
            if started - self.contact_written < CONTACT_WRITE_S:
                return
            self.contact_written = started
            wall = time.time() - (time.monotonic() - started)
            with contextlib.suppress(OSError):
                tmp = self.config.work_dir / (fence.CONTACT_FILE + ".tmp")
                tmp.write_text(f"{wall:.3f}")
                tmp.replace(self.config.work_dir / fence.CONTACT_FILE)

    # -- reports ----------------------------------------------------------------

    def _on_exit(self, task: LocalTask) -> None:
        log.info("task_exited", task=task.id, job=task.assignment.job_id,
                 exit_code=task.exit_code, signalled=task.signalled,
                 memory_exceeded=task.memory_exceeded)
        self._queue(task.id, task.report())

    def _queue(self, task_id: str, body: TaskUpdate) -> None:
        """Send a report until the server answers; a newer one replaces an
        unsent older one (an exit always wins)."""
        old = self.pending.get(task_id)
        if old is not None and old.exited and not body.exited:
            return
        self.pending[task_id] = body
        if self.sender is None or self.sender.done():
            self.sender = asyncio.ensure_future(self._send())

    async def _send(self) -> None:
        """Send every pending report, as many as are waiting in one call:
        while one call is out, the reports that come meanwhile gather for the
        next (a task per call was the agent's limit on short tasks)."""
        delay = 0.05
        while self.pending:
            batch = dict(self.pending)
            try:
                answers = await self._deliver(batch)
            except (ClientError, OSError) as exc:
                log.debug("report_retry", tasks=len(batch), error=repr(exc))
                answers = {}
            for task_id, body in batch.items():
                if task_id not in answers:
                    continue
                if self.pending.get(task_id) is body:
                    del self.pending[task_id]
                if body.exited:
                    self._exit_delivered(task_id)
            if len(answers) < len(batch):
                await asyncio.sleep(delay)
                delay = retry_delay(delay)
            else:
                delay = 0.05

    async def _deliver(self, batch: Mapping[str, TaskUpdate]) -> dict[str, dict[str, Any]]:
        """One attempt at the reports of ``batch``: the answers by task, less
        the reports the server refused for now (sent again)."""
        started = time.monotonic()
        bodies = dict(batch)
        for task_id, body in batch.items():
            if body.exited:
                await self._ship_logs(task_id)
                bodies[task_id] = replace(body, checkpoint=await self._upload_checkpoint(
                    task_id, body))
        try:
            answers = await self.client.report_tasks(self.config.name, bodies)
        except ClientError as exc:
            if exc.status == 409:
                await self._reregister()
                return {}
            if exc.status >= 500:
                return {}
            self._contact(started)
            log.error("report_refused", tasks=sorted(bodies), status=exc.status,
                      body=str(exc.body)[:500])
            return {task_id: {} for task_id in bodies}
        self._contact(started)
        out: dict[str, dict[str, Any]] = {}
        unknown = False
        for answer in answers if isinstance(answers, list) else []:
            status = answer.get("status") if "error" in answer else None
            if status == 409:  # the server does not know this agent: register, send again
                unknown = True
                continue
            if isinstance(status, int) and status >= 500:
                continue
            if status is not None:
                log.error("report_refused", task=answer.get("task"), status=status,
                          body=str(answer)[:500])
            out[str(answer.get("task"))] = answer
        if unknown:
            await self._reregister()
        return out

    def _exit_delivered(self, task_id: str) -> None:
        runner = self.runner
        assert runner is not None
        task = runner.tasks.get(task_id)
        if task is not None:
            runner.reported(task)
        for stream in LOG_STREAMS:
            self.shipped.pop((task_id, stream), None)

    async def _upload_checkpoint(self, task_id: str, body: TaskUpdate) -> bool:
        """Upload what a task that did not succeed saved, so it resumes from
        it on whichever node runs it next. The agent packs the checkpoint
        directory itself on every attempt (never a tar the task wrote) and
        streams it from disk; one over the limit, here or at the server
        (413), is left behind and the exit reported without it."""
        runner = self.runner
        assert runner is not None
        task = runner.tasks.get(task_id)
        if task is None or (body.exit_code == 0 and not body.signalled):
            return False
        if not runner.has_checkpoint(task):
            # A directory read: a thread hop for it cost more, on the path of
            # every preempted task's end (a device switch waits for it).
            return False
        try:
            packed = await asyncio.to_thread(runner.pack_checkpoint, task,
                                             self.config.checkpoint_max)
        except CheckpointError as exc:
            log.error("checkpoint_not_packed", task=task_id, error=str(exc))
            return False
        if packed is None:
            return False
        try:
            await self.client.put_checkpoint(self.config.name, task_id, _chunks(packed.path),
                                             packed.size)
        except ClientError as exc:
            if exc.status not in (404, 413):
                raise
            log.error("checkpoint_not_stored", task=task_id, status=exc.status,
                      size=packed.size, body=str(exc.body)[:300])
            return False
        finally:
            packed.path.unlink(missing_ok=True)
        return True

    # -- logs ---------------------------------------------------------------------

    async def _log_loop(self) -> None:
        await self.registered.wait()
        while True:
            await asyncio.sleep(self.config.log_interval_s)
            runner = self.runner
            assert runner is not None
            for task in list(runner.running()):
                with contextlib.suppress(ClientError, OSError):
                    await self._ship_logs(task.id)

    async def _ship_logs(self, task_id: str) -> None:
        """Send the log bytes written since the last shipment."""
        task_dir = self.config.work_dir / "tasks" / task_id
        for stream in LOG_STREAMS:
            path = task_dir / f"{stream}.log"
            offset = self.shipped.get((task_id, stream), 0)
            while True:
                data = await _read_log(path, offset)
                if not data:
                    break
                try:
                    await self.client.push_log(self.config.name, task_id, stream, offset, data)
                except ClientError as exc:
                    if exc.status == 404:
                        return  # the task is no longer live on the server: nothing to add to
                    raise
                offset += len(data)
                self.shipped[(task_id, stream)] = offset

    # -- heartbeats ------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        await self.registered.wait()
        while True:
            started = time.monotonic()
            try:
                await self._heartbeat(started)
            except TransportError as exc:
                log.debug("heartbeat_failed", error=repr(exc))
            elapsed = time.monotonic() - started
            await asyncio.sleep(max(0.0, self.config.heartbeat_s - elapsed))

    async def _heartbeat(self, started: float) -> None:
        runner = self.runner
        assert runner is not None
        usage, tasks = await asyncio.to_thread(self._sample, runner.running())
        try:
            answer = await self.client.agent_heartbeat(self.config.name, self.id, usage, tasks)
        except ClientError as exc:
            if exc.status == 409:
                await self._reregister()
            return
        self._contact(started)
        if answer.get("registered") is False:
            await self._reregister()  # a server that does not know this agent

    def _sample(self, running: list[LocalTask]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Usage of the node and of each task (in a worker thread: the list of
        tasks is taken on the loop, which alone changes it)."""
        runner = self.runner
        assert runner is not None
        usage = sample_usage(self.config.work_dir, self.nvml, xids=self.xids)
        tasks = [runner.usage(t) for t in running]
        for task in running:
            runner.note_gpus(task, usage.get("gpus") or [])
        usage["running_tasks"] = [t["id"] for t in tasks]
        return usage, tasks


def _device_body(device: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"id": device.id, "attrs": dict(device.attrs)}
    for key in ("model", "memory", "uuid", "serial"):
        value = getattr(device, key)
        if value is not None:
            body[key] = value
    return body


async def _chunks(path: Path) -> AsyncIterator[bytes]:
    """An upload body read from disk a chunk at a time, off the event loop."""
    with path.open("rb") as fh:
        while chunk := await asyncio.to_thread(fh.read, checkpoint.CHUNK):
            yield chunk


async def _read_log(path: Path, offset: int) -> bytes:
    """New log bytes; small reads inline (a thread hop would cost more than
    the read on the stop path), large ones in a thread. A log no longer than
    what was shipped (most short tasks' logs are empty) is not opened: the
    stat already says there is nothing new."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return b""
    if size <= offset:
        return b""
    # Ask for what the stat saw: ``pread`` sizes its buffer to the request
    # (1 MiB for a few bytes otherwise); bytes written since come next time.
    limit = min(LOG_CHUNK, size - offset)
    if limit <= 1 << 16:
        return _read_from(path, offset, limit)
    return await asyncio.to_thread(_read_from, path, offset, limit)


def _read_from(path: Path, offset: int, limit: int) -> bytes:
    """Up to ``limit`` bytes from ``offset``: one ``pread`` on a bare
    descriptor (a buffered file adds an fstat, an ioctl and two seeks)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return b""
    try:
        return os.pread(fd, limit, offset)
    finally:
        os.close(fd)
