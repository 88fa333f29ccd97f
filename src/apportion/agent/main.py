"""``apportion agent``: the process on each node that makes the scheduler's
decisions real.

It discovers the machine and registers it, then runs a few loops side by
side on one event loop:

- **assignments**: a long-poll for the node's desired state; each answer
  starts the tasks it lists, stops the ones it asks to stop, and kills any
  process the server no longer lists (its allocation was released);
- **heartbeat**: live usage and the running tasks, every ``heartbeat_s``;
- **reports**: every task transition is sent until the server answers
  (exits first ship the last log bytes and any checkpoint);
- **logs**: new log bytes of running tasks go to the server every
  ``log_interval_s``;
- **fencing**: cut off from the server for ``stop_after_disconnect_s``, the
  agent stops its tasks, because the server then requeues them elsewhere;
- **rescan**: discovery again on a period and on demand.

What the agent keeps from its tasks (its token, its records, other tasks'
files, GPUs not granted) is in ``isolation.py``, ``gpu_isolation.py``,
``credentials.py`` and ``checkpoint.py``, and docs/security.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import structlog

from apportion.agent import checkpoint, credentials, fence
from apportion.agent.checkpoint import CheckpointError
from apportion.agent.discovery import AUTO, Discovery, NvmlModule, discover, load_nvml
from apportion.agent.gpu_isolation import (
    ENV_ONLY,
    GpuIsolation,
    GpuIsolationError,
    GpuMode,
    detect_gpu_isolation,
    nvidia_nodes,
)
from apportion.agent.isolation import SHARED, Isolation, IsolationMode, choose_sandbox_root
from apportion.agent.limits import LimitSupport, detect_limits
from apportion.agent.protocol import API, Assignment, safe_task_id
from apportion.agent.runner import LocalTask, Runner
from apportion.agent.transport import FailoverTransport, parse_servers, retry_delay
from apportion.agent.usage import XidCounter, sample_usage
from apportion.core.resources import format_vector

log = structlog.get_logger(__name__)

VERSION = "0.1.0"
LOG_STREAMS = ("stdout", "stderr")
LOG_CHUNK = 1 << 20
TOKEN_FILE = "agent.token"
"""In the work dir: the agent token a one-time join token was exchanged for,
used instead of the configured token from then on (mode 600)."""


@dataclass(frozen=True)
class AgentConfig:
    server: str
    token: str
    name: str
    work_dir: Path
    labels: Mapping[str, str] = field(default_factory=dict)
    declared: Mapping[str, int] | None = None
    reserve: Mapping[str, int] = field(default_factory=dict)
    devices_file: Path | None = None
    heartbeat_s: float = 10.0
    stop_after_disconnect_s: float = 60.0
    rescan_s: float = 300.0
    poll_wait_s: float = 20.0
    log_interval_s: float = 1.0
    watchdog_s: float = 1.0
    on_exit: str = "leave"
    """``leave``: tasks keep running for a new agent to adopt (the fence
    stops them after ``stop_after_disconnect_s`` if none comes); ``stop``:
    stop them before exiting (``apportion up``)."""
    fence: bool = True
    checkpoint_max: int = checkpoint.DEFAULT_MAX
    """Per task, both ways: a larger checkpoint is not packed or not unpacked."""
    isolation: Isolation = SHARED
    gpu_isolation: GpuMode | None = None
    """A GPU mode to insist on (None: the strongest the host allows)."""
    sandbox_dir: Path | None = None
    """Where task directories go (default ``<work_dir>/sandbox``, or
    ``/var/lib/apportion/sandbox/<name>`` where task users cannot reach that)."""


class Agent:
    """One node's agent."""

    def __init__(self, config: AgentConfig, *, nvml: NvmlModule | None = AUTO) -> None:
        self.config = config
        self.id = uuid.uuid4().hex[:16]
        self.nvml = load_nvml() if nvml is AUTO else nvml
        token = config.token
        with contextlib.suppress(OSError):
            token = (config.work_dir / TOKEN_FILE).read_text().strip() or token
        servers = parse_servers(config.server)
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=16)
        self.transport = FailoverTransport(servers, httpx.AsyncHTTPTransport(limits=limits))
        self.http = httpx.AsyncClient(
            base_url=str(servers[0]),
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(30.0, read=config.poll_wait_s + 30.0),
            transport=self.transport,
        )
        self.base = f"{API}/{config.name}"
        self.runner: Runner | None = None
        self.support: LimitSupport | None = None
        self.gpu: GpuIsolation = ENV_ONLY
        self.discovery: Discovery | None = None
        self.registered = asyncio.Event()
        self.stopped = asyncio.Event()
        self.last_contact = time.monotonic()
        self.epoch: str | None = None
        self.seq = -1
        self.rescans_seen: tuple[str, int] | None = None
        self.pending: dict[str, dict[str, Any]] = {}
        self.senders: dict[str, asyncio.Task[None]] = {}
        self.shipped: dict[tuple[str, str], int] = {}
        self.fence_proc: subprocess.Popen[bytes] | None = None
        self.xids: XidCounter | None = None
        self._background: set[asyncio.Task[Any]] = set()

    # -- running ------------------------------------------------------------

    async def run(self) -> None:
        """Run until ``stop()`` (or SIGTERM / SIGINT)."""
        work = self.config.work_dir
        work.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.config.isolation.mode is not IsolationMode.SHARED_UID:
            work.chmod(0o711)  # task users pass through to their sandboxes, never list
        self.support = await asyncio.to_thread(detect_limits)
        try:
            self.gpu = await asyncio.to_thread(detect_gpu_isolation, self.support,
                                               work / "devns", want=self.config.gpu_isolation)
        except GpuIsolationError as exc:
            log.error("gpu_isolation_unavailable", error=str(exc))
            raise SystemExit(2) from None
        self.discovery = await asyncio.to_thread(self._discover)
        # Xid errors reach NVML only as events: listen for the agent's lifetime.
        self.xids = await asyncio.to_thread(XidCounter(self.nvml).open)
        sandboxes = choose_sandbox_root(work, self.config.sandbox_dir, self.config.isolation,
                                        self.config.name)
        self.runner = Runner(work, self.config.name, self.support, self._on_exit,
                             watchdog_s=self.config.watchdog_s, isolation=self.config.isolation,
                             gpu=self.gpu, sandbox_root=sandboxes,
                             gpu_minors=_gpu_minors(self.discovery),
                             fence_gpus=bool(nvidia_nodes()))
        for task in self.runner.open():
            self._on_exit(task)
        self._claim_work_dir()
        loops = [self._poll_loop(), self._heartbeat_loop(), self._log_loop(),
                 self._fence_loop(), self._rescan_loop()]
        workers = [asyncio.create_task(c) for c in loops]
        await self._register()
        log.info("agent_ready", node=self.config.name, limits=self.support.mode.value,
                 isolation=self.config.isolation.mode.value, gpu_isolation=self.gpu.mode.value,
                 resources=self.discovery.resources)
        try:
            await self.stopped.wait()
        finally:
            for w in workers:
                w.cancel()
            await self._shutdown()

    def stop(self) -> None:
        self.stopped.set()

    async def _shutdown(self) -> None:
        assert self.runner is not None
        if self.config.on_exit == "stop":
            await self._stop_everything()
            if self.fence_proc is not None:
                self.fence_proc.terminate()
        self.runner.close()
        if self.xids is not None:
            self.xids.close()
        await self.http.aclose()

    async def _stop_everything(self) -> None:
        """Stop every task and report the exits, bounded in time."""
        assert self.runner is not None
        running = self.runner.running()
        for task in running:
            a = task.assignment
            self.runner.stop(task.id, a.stop_signal, min(a.stop_grace_s, 5.0), state="lost",
                             lost=True)
        deadline = time.monotonic() + 8.0
        while (self.runner.running() or self.pending) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- discovery and registration ------------------------------------------

    def _discover(self) -> Discovery:
        c = self.config
        return discover(c.work_dir, nvml=self.nvml, devices_file=c.devices_file,
                        reserve=c.reserve, declared=c.declared)

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
        body = {"node": self._node_body(), "agent": self._agent_body()}
        delay = 0.1
        first = time.monotonic()
        while True:
            started = time.monotonic()
            try:
                response = await self.http.post(f"{API}/register", json=body)
            except httpx.HTTPError as exc:
                # A server still starting (apportion up) is not worth a warning.
                quiet = started - first < 10
                (log.debug if quiet else log.warning)("register_failed", error=repr(exc))
            else:
                if response.status_code == 200:
                    self._contact(started)
                    self._adopt_token(response.json())
                    self.registered.set()
                    return
                log.error("register_refused", status=response.status_code, body=response.text)
            await asyncio.sleep(delay)
            delay = retry_delay(delay)

    def _adopt_token(self, answer: Mapping[str, Any]) -> None:
        """A join token was spent: keep the agent token the server gave for it."""
        token = answer.get("agent_token")
        if not isinstance(token, str) or not token:
            return
        self.http.headers["Authorization"] = f"Bearer {token}"
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
            wall = time.time() - (time.monotonic() - started)
            with contextlib.suppress(OSError):
                tmp = self.config.work_dir / (fence.CONTACT_FILE + ".tmp")
                tmp.write_text(f"{wall:.3f}")
                tmp.replace(self.config.work_dir / fence.CONTACT_FILE)

    def _claim_work_dir(self) -> None:
        """Record this agent's pid and start a fence for it (stopping the
        previous agent's fence: this agent now owns those tasks)."""
        work = self.config.work_dir
        me = psutil.Process()
        (work / fence.AGENT_PID_FILE).write_text(f"{me.pid} {me.create_time()}")
        old = work / fence.FENCE_PID_FILE
        with contextlib.suppress(OSError, ValueError, psutil.Error):
            pid = int(old.read_text().split()[0])
            proc = psutil.Process(pid)
            if any("apportion.agent.fence" in part for part in proc.cmdline()):
                proc.terminate()
        if not self.config.fence:
            return
        self.fence_proc = subprocess.Popen(
            [sys.executable, "-m", "apportion.agent.fence", str(work), str(me.pid),
             str(me.create_time()), str(self.config.stop_after_disconnect_s)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        old.write_text(str(self.fence_proc.pid))

    # -- assignments ----------------------------------------------------------

    async def _poll_loop(self) -> None:
        await self.registered.wait()
        delay = 0.1
        while True:
            started = time.monotonic()
            params: dict[str, Any] = {"after": self.seq, "wait": self.config.poll_wait_s}
            if self.epoch:
                params["epoch"] = self.epoch
            try:
                response = await self.http.get(f"{self.base}/assignments", params=params)
            except httpx.HTTPError:
                await asyncio.sleep(delay)
                delay = retry_delay(delay)
                continue
            if response.status_code == 409:
                await self._reregister()
                continue
            if response.status_code != 200:
                await asyncio.sleep(delay)
                delay = retry_delay(delay)
                continue
            delay = 0.1
            self._contact(started)
            body = response.json()
            self.epoch, self.seq = body["epoch"], int(body["seq"])
            self.apply(body)

    def apply(self, state: Mapping[str, Any]) -> None:
        """Bring this node to the server's desired state."""
        runner = self.runner
        assert runner is not None
        desired = {a.id: a for a in (Assignment.from_wire(t) for t in state["tasks"])}
        for task_id in [i for i in desired if not safe_task_id(i)]:
            log.error("unsafe_task_id", task=task_id[:200])  # never a path on this node
            del desired[task_id]
        for a in desired.values():
            local = runner.tasks.get(a.id)
            if local is None and runner.known(a.id):
                self._resend(a)
            elif local is None:
                # Recorded now, so the next answer (which may come before the
                # start finishes) finds the task and does not start it again.
                self._spawn(self._start(runner.prepare(a)))
            elif a.stop is not None and not local.signalled:
                runner.stop(a.id, a.stop_signal, a.stop_grace_s, state=a.stop.state)
        for task in runner.running():
            if task.id not in desired:
                log.warning("task_not_ours", task=task.id, job=task.assignment.job_id)
                task.reason = "the server no longer lists this task (its allocation ended)"
                runner.kill(task.id)
        rescan = state.get("rescan")
        if isinstance(rescan, int):
            # The counter is per server run: a new epoch only sets the baseline.
            seen = self.rescans_seen
            if seen is not None and seen[0] == state.get("epoch") and rescan > seen[1]:
                self._spawn(self.rescan())
            self.rescans_seen = (str(state.get("epoch")), rescan)

    async def _start(self, task: LocalTask) -> None:
        runner = self.runner
        assert runner is not None
        a = task.assignment
        if a.stop is not None:
            runner.stop(a.id, a.stop_signal, 0, state=a.stop.state)
            return
        resumed = False
        if a.resume_task:
            self._queue(a.id, {"state": "starting", "times": dict(task.times)})
            resumed = await self._fetch_checkpoint(task, a.resume_task)
        if task.state == "exited":
            return  # stopped while it was being prepared
        runner.spawn(task, resumed=resumed)
        if task.state == "running":
            self._queue(a.id, {"state": "running", "times": dict(task.times)})

    async def _fetch_checkpoint(self, task: LocalTask, source: str) -> bool:
        """Download the checkpoint the task resumes from into the agent's
        records (streamed, under the limit), then unpack it into the task's
        ``resume/``. A refused or oversized checkpoint is not retried: the
        task starts without it."""
        runner = self.runner
        assert runner is not None
        path = task.dir / "resume.tar"
        try:
            for attempt in range(5):
                try:
                    await self._download(f"{API}/checkpoints/{source}", path)
                    files = await asyncio.to_thread(runner.unpack_checkpoint, task, path,
                                                    self.config.checkpoint_max)
                    log.info("checkpoint_unpacked", task=task.id, files=files)
                    return True
                except CheckpointError as exc:
                    log.error("checkpoint_refused", task=task.id, source=source, error=str(exc))
                    return False
                except (httpx.HTTPError, OSError) as exc:
                    log.warning("checkpoint_fetch_failed", task=task.id, attempt=attempt,
                                error=repr(exc))
                    await asyncio.sleep(0.2 * 2**attempt)
            return False
        finally:
            path.unlink(missing_ok=True)

    async def _download(self, url: str, path: Path) -> None:
        limit = self.config.checkpoint_max
        async with self.http.stream("GET", url) as response:
            if response.status_code != 200:
                raise httpx.HTTPError(f"HTTP {response.status_code}")
            declared = response.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise checkpoint.CheckpointTooLarge(
                    f"the checkpoint is {declared} bytes, over the limit of {limit}")
            sink = checkpoint.Download(path, limit)
            try:
                async for chunk in response.aiter_bytes(checkpoint.CHUNK):
                    await asyncio.to_thread(sink.write, chunk)
            finally:
                sink.close()

    def _resend(self, a: Assignment) -> None:
        """A task this node already ran is listed again (the server missed
        its exit): send the exit again, never run it twice."""
        if a.id in self.pending:
            return
        try:
            body = json.loads((self.config.work_dir / "tasks" / a.id / "task.json").read_text())
        except (OSError, ValueError):
            body = {}
        report = body.get("report") or {"state": "exited", "exit_code": None,
                                        "reason": "this node lost the task's record"}
        self._queue(a.id, dict(report))

    # -- reports ----------------------------------------------------------------

    def _on_exit(self, task: LocalTask) -> None:
        log.info("task_exited", task=task.id, job=task.assignment.job_id,
                 exit_code=task.exit_code, signalled=task.signalled,
                 memory_exceeded=task.memory_exceeded)
        self._queue(task.id, task.report())

    def _queue(self, task_id: str, body: dict[str, Any]) -> None:
        """Send a report until the server answers; a newer one replaces an
        unsent older one (an exit always wins)."""
        old = self.pending.get(task_id)
        if old is not None and old["state"] == "exited" and body["state"] != "exited":
            return
        self.pending[task_id] = body
        sender = self.senders.get(task_id)
        if sender is None or sender.done():
            self.senders[task_id] = asyncio.ensure_future(self._send(task_id))

    async def _send(self, task_id: str) -> None:
        delay = 0.05
        while task_id in self.pending:
            body = self.pending[task_id]
            try:
                answer = await self._deliver(task_id, body)
            except (httpx.HTTPError, OSError) as exc:
                log.debug("report_retry", task=task_id, error=repr(exc))
                await asyncio.sleep(delay)
                delay = retry_delay(delay)
                continue
            if answer is None:
                await asyncio.sleep(delay)
                delay = retry_delay(delay)
                continue
            if self.pending.get(task_id) is body:
                del self.pending[task_id]
            if body["state"] == "exited":
                self._exit_delivered(task_id)
        self.senders.pop(task_id, None)

    async def _deliver(self, task_id: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """One attempt at a report; None when the server refused it for now."""
        started = time.monotonic()
        out = dict(body)
        if body["state"] == "exited":
            await self._ship_logs(task_id)
            out["checkpoint"] = await self._upload_checkpoint(task_id, body)
        response = await self.http.post(f"{self.base}/tasks/{task_id}/report", json=out)
        if response.status_code == 409:
            await self._reregister()
            return None
        if response.status_code >= 500:
            return None
        self._contact(started)
        if response.status_code != 200:
            log.error("report_refused", task=task_id, status=response.status_code,
                      body=response.text[:500])
            return {}
        result: dict[str, Any] = response.json()
        return result

    def _exit_delivered(self, task_id: str) -> None:
        runner = self.runner
        assert runner is not None
        task = runner.tasks.get(task_id)
        if task is not None:
            runner.reported(task)
        for stream in LOG_STREAMS:
            self.shipped.pop((task_id, stream), None)

    async def _upload_checkpoint(self, task_id: str, body: Mapping[str, Any]) -> bool:
        """Upload what a task that did not succeed saved, so it resumes from
        it on whichever node runs it next. The agent packs the checkpoint
        directory itself on every attempt (never a tar the task wrote) and
        streams it from disk; one over the limit, here or at the server
        (413), is left behind and the exit reported without it."""
        runner = self.runner
        assert runner is not None
        task = runner.tasks.get(task_id)
        if task is None or (body.get("exit_code") == 0 and not body.get("signalled")):
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
            response = await self.http.put(
                f"{self.base}/tasks/{task_id}/checkpoint", content=_chunks(packed.path),
                headers={"Content-Type": "application/x-tar",
                         "Content-Length": str(packed.size)})
        finally:
            packed.path.unlink(missing_ok=True)
        if response.status_code in (404, 413):
            log.error("checkpoint_not_stored", task=task_id, status=response.status_code,
                      size=packed.size, body=response.text[:300])
            return False
        if response.status_code != 200:
            raise httpx.HTTPError(f"checkpoint upload: HTTP {response.status_code}")
        return True

    # -- logs ---------------------------------------------------------------------

    async def _log_loop(self) -> None:
        await self.registered.wait()
        while True:
            await asyncio.sleep(self.config.log_interval_s)
            runner = self.runner
            assert runner is not None
            for task in list(runner.running()):
                with contextlib.suppress(httpx.HTTPError, OSError):
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
                response = await self.http.post(
                    f"{self.base}/tasks/{task_id}/logs/{stream}", params={"offset": offset},
                    content=data, headers={"Content-Type": "application/octet-stream"})
                if response.status_code == 404:
                    return  # the task is no longer live on the server: nothing to add to
                if response.status_code != 200:
                    raise httpx.HTTPError(f"log shipment: HTTP {response.status_code}")
                offset += len(data)
                self.shipped[(task_id, stream)] = offset

    # -- heartbeats and fencing --------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        await self.registered.wait()
        while True:
            started = time.monotonic()
            try:
                await self._heartbeat(started)
            except httpx.HTTPError as exc:
                log.debug("heartbeat_failed", error=repr(exc))
            elapsed = time.monotonic() - started
            await asyncio.sleep(max(0.0, self.config.heartbeat_s - elapsed))

    async def _heartbeat(self, started: float) -> None:
        runner = self.runner
        assert runner is not None
        usage, tasks = await asyncio.to_thread(self._sample, runner.running())
        response = await self.http.post(f"{self.base}/heartbeat", json={
            "agent_id": self.id, "usage": usage, "tasks": tasks})
        if response.status_code == 409:
            await self._reregister()
        elif response.status_code == 200:
            self._contact(started)
            if response.json().get("registered") is False:
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

    async def _fence_loop(self) -> None:
        """Cut off from the server too long, stop every task: the server
        gives them to other nodes once ``stop_after_disconnect_s`` has passed.
        The stop signal goes out early enough for the grace to fit."""
        limit = self.config.stop_after_disconnect_s
        tick = min(0.25, self.config.heartbeat_s / 2)
        while True:
            await asyncio.sleep(tick)
            runner = self.runner
            assert runner is not None
            silent = time.monotonic() - self.last_contact
            for task in runner.running():
                a = task.assignment
                grace = min(a.stop_grace_s, limit / 2)
                if silent >= limit:
                    task.lost = True
                    task.reason = task.reason or f"killed after {silent:.1f}s without the server"
                    runner.kill(task.id)  # even one stopping with a longer grace
                elif not task.signalled and silent >= limit - grace:
                    log.warning("fencing_task", task=task.id, silent_s=round(silent, 2))
                    task.reason = f"stopped after {silent:.1f}s without the server"
                    runner.stop(task.id, a.stop_signal, max(0.0, limit - silent), lost=True)

    # -- rescans ----------------------------------------------------------------------

    async def _rescan_loop(self) -> None:
        await self.registered.wait()
        while True:
            await asyncio.sleep(self.config.rescan_s)
            await self.rescan()

    async def rescan(self) -> None:
        """Discover again; a changed machine is registered again."""
        try:
            found = await asyncio.to_thread(self._discover)
        except Exception as exc:
            log.warning("rescan_failed", error=repr(exc))
            return
        old = self.discovery
        self.discovery = found
        if self.runner is not None:
            self.runner.gpu_minors = _gpu_minors(found)
            self.runner.fence_gpus = bool(self.runner.gpu_minors or nvidia_nodes())
        if old is None or (found.resources, found.devices, found.labels) != (
                old.resources, old.devices, old.labels):
            log.info("node_changed", resources=found.resources)
        await self._reregister()


def _device_body(device: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"id": device.id, "attrs": dict(device.attrs)}
    for key in ("model", "memory", "uuid", "serial"):
        value = getattr(device, key)
        if value is not None:
            body[key] = value
    return body


def _gpu_minors(discovery: Discovery) -> dict[str, int]:
    """Each GPU's ``/dev/nvidia<minor>`` (NVML's minor number, else its index)."""
    out = {}
    for device in discovery.devices.get("gpu", ()):
        minor = device.attrs.get("minor", device.id)
        if isinstance(minor, int) or (isinstance(minor, str) and minor.isdigit()):
            out[device.id] = int(minor)
    return out


async def _chunks(path: Path) -> AsyncIterator[bytes]:
    """An upload body read from disk a chunk at a time, off the event loop."""
    with path.open("rb") as fh:
        while chunk := await asyncio.to_thread(fh.read, checkpoint.CHUNK):
            yield chunk


async def _read_log(path: Path, offset: int) -> bytes:
    """New log bytes; small reads inline (a thread hop would cost more than
    the read on the stop path), large ones in a thread."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return b""
    if size - offset <= 1 << 16:
        return _read_from(path, offset, LOG_CHUNK)
    return await asyncio.to_thread(_read_from, path, offset, LOG_CHUNK)


def _read_from(path: Path, offset: int, limit: int) -> bytes:
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            return fh.read(limit)
    except FileNotFoundError:
        return b""


def run_agent(config: AgentConfig, *, nvml: NvmlModule | None = AUTO,
              on_ready: Callable[[Agent], None] | None = None) -> None:
    """Run an agent in this process until SIGTERM or SIGINT. Files it makes
    are its own (umask 077), and its ``/proc`` entries and memory are root's
    alone (non-dumpable), even for processes of its uid."""
    os.umask(0o077)
    if not credentials.forbid_dumping():
        log.warning("agent_dumpable", reason="prctl(PR_SET_DUMPABLE) is not available")

    async def main() -> None:
        agent = Agent(config, nvml=nvml)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, agent.stop)
        if on_ready is not None:
            on_ready(agent)
        await agent.run()

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:  # pragma: no cover - uvloop is installed with uvicorn[standard]
        asyncio.run(main())
