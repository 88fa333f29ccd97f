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

What is sent (the registration, heartbeats, reports and logs) is in
``reporting.py``; the options are in ``config.py``.

What the agent keeps from its tasks (its token, its records, other tasks'
files, GPUs not granted) is in ``isolation.py``, ``gpu_isolation.py``,
``credentials.py`` and ``checkpoint.py``, and docs/security.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import structlog

from apportion.agent import checkpoint, credentials, fence
from apportion.agent.checkpoint import CheckpointError
from apportion.agent.config import AgentConfig
from apportion.agent.discovery import AUTO, Discovery, discover
from apportion.agent.gpu_isolation import (
    ENV_ONLY,
    GpuIsolation,
    GpuIsolationError,
    detect_gpu_isolation,
    nvidia_nodes,
)
from apportion.agent.isolation import IsolationMode, choose_sandbox_root
from apportion.agent.limits import LimitSupport, detect_limits
from apportion.agent.local_task import LocalTask
from apportion.agent.protocol import Assignment, DesiredState, TaskUpdate, safe_task_id
from apportion.agent.reporting import TOKEN_FILE, Reporting
from apportion.agent.runner import Runner
from apportion.agent.transport import FailoverTransport, parse_servers, retry_delay
from apportion.agent.usage import XidCounter
from apportion.async_client import AsyncClient, ClientError, TransportError
from apportion.core.gpu_shares import SHARES
from apportion.nvml import NvmlModule, load_nvml

log = structlog.get_logger(__name__)


class Agent(Reporting):
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
        # A held long-poll answers after up to poll_wait_s: reads wait that long more.
        self.client = AsyncClient(str(servers[0]), token, read_timeout=config.poll_wait_s + 30.0,
                                  transport=self.transport)
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
        self.pending: dict[str, TaskUpdate] = {}
        self.sender: asyncio.Task[None] | None = None
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
        await self.client.aclose()

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

    # -- discovery ---------------------------------------------------------------

    def _discover(self) -> Discovery:
        c = self.config
        return discover(c.work_dir, nvml=self.nvml, devices_file=c.devices_file,
                        reserve=c.reserve, declared=c.declared, gpu_shares=c.gpu_shares,
                        shared_gpus=c.shared_gpus)

    # -- the work dir and its fence -----------------------------------------------

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
            try:
                state: DesiredState = await self.client.agent_assignments(
                    self.config.name, after=self.seq, wait=self.config.poll_wait_s,
                    epoch=self.epoch or None)
            except ClientError as exc:
                if exc.status == 409:
                    await self._reregister()
                    continue
                await asyncio.sleep(delay)
                delay = retry_delay(delay)
                continue
            except TransportError:
                await asyncio.sleep(delay)
                delay = retry_delay(delay)
                continue
            delay = 0.1
            self._contact(started)
            self.epoch, self.seq = state.epoch, state.seq
            self.apply(state)

    def apply(self, state: DesiredState) -> None:
        """Bring this node to the server's desired state."""
        runner = self.runner
        assert runner is not None
        desired = {a.id: a for a in state.tasks}
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
        rescan = state.rescan
        if rescan >= 0:
            # The counter is per server run: a new epoch only sets the baseline.
            seen = self.rescans_seen
            if seen is not None and seen[0] == state.epoch and rescan > seen[1]:
                self._spawn(self.rescan())
            self.rescans_seen = (state.epoch, rescan)

    async def _start(self, task: LocalTask) -> None:
        runner = self.runner
        assert runner is not None
        a = task.assignment
        if a.stop is not None:
            runner.stop(a.id, a.stop_signal, 0, state=a.stop.state)
            return
        resumed = False
        if a.resume_task:
            self._queue(a.id, TaskUpdate("starting", dict(task.times)))
            resumed = await self._fetch_checkpoint(task, a.resume_task)
        if task.state == "exited":
            return  # stopped while it was being prepared
        runner.spawn(task, resumed=resumed)
        if task.state == "running":
            self._queue(a.id, TaskUpdate("running", dict(task.times)))

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
                    await self._download(source, path)
                    files = await asyncio.to_thread(runner.unpack_checkpoint, task, path,
                                                    self.config.checkpoint_max)
                    log.info("checkpoint_unpacked", task=task.id, files=files)
                    return True
                except CheckpointError as exc:
                    log.error("checkpoint_refused", task=task.id, source=source, error=str(exc))
                    return False
                except (ClientError, OSError) as exc:
                    log.warning("checkpoint_fetch_failed", task=task.id, attempt=attempt,
                                error=repr(exc))
                    await asyncio.sleep(0.2 * 2**attempt)
            return False
        finally:
            path.unlink(missing_ok=True)

    async def _download(self, source: str, path: Path) -> None:
        limit = self.config.checkpoint_max
        async with self.client.checkpoint(source) as download:
            if download.length is not None and download.length > limit:
                raise checkpoint.CheckpointTooLarge(
                    f"the checkpoint is {download.length} bytes, over the limit of {limit}")
            sink = checkpoint.Download(path, limit)
            try:
                async for chunk in download.chunks(checkpoint.CHUNK):
                    await asyncio.to_thread(sink.write, chunk)
            finally:
                sink.close()

    def _resend(self, a: Assignment) -> None:
        """A task this node already ran is listed again (the server missed
        its exit): send the exit again, never run it twice."""
        if a.id in self.pending:
            return
        try:
            body = self.runner.dirs.record_of(a.id) if self.runner is not None else {}
        except (OSError, ValueError):
            body = {}
        saved = body.get("report")
        self._queue(a.id, TaskUpdate.from_wire(saved) if saved else TaskUpdate(
            "exited", reason="this node lost the task's record"))

    # -- fencing ---------------------------------------------------------------------

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


def _gpu_minors(discovery: Discovery) -> dict[str, int]:
    """Each GPU's ``/dev/nvidia<minor>`` (NVML's minor number, else its index)."""
    out = {}
    shared = discovery.devices.get(SHARES, ())
    for device in (*discovery.devices.get("gpu", ()), *shared):
        gpu = str(device.attrs.get("parent", device.id))  # a share slot: its GPU
        minor = device.attrs.get("minor", gpu)
        if isinstance(minor, int) or (isinstance(minor, str) and minor.isdigit()):
            out[gpu] = int(minor)
    return out


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


# With AgentConfig, which moved to config and is still imported from here.
__all__ = ["Agent", "AgentConfig", "run_agent"]
