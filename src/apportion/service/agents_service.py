"""Agents: registration, heartbeats, assignments, task reports, lost nodes.

Each node with an agent has a ``Session`` in memory: when the server last
heard from it, its latest usage, and a version number with an event that
wakes the agent's long-poll whenever what the node must run changes. The
answer to a poll is the node's whole desired state (every task it must run
or stop), not a message queue: a lost answer costs nothing, and after a
restart of either side the next poll brings everyone level again.

A node whose agent falls silent is ``suspect`` after three missed
heartbeats and ``down`` after ``down_after_s`` — and never before the
agent's own ``stop_after_disconnect`` has passed, because until then the
agent may still be running the tasks. Only then are the tasks ended as
``lost`` and requeued, so a partition never runs one task twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import structlog

from apportion.core.model import Device, Node, NodeState, ReleaseReason
from apportion.exceptions import (
    AgentUnknown,
    ApportionError,
    InvalidInput,
    NodeNotFound,
    NotFound,
)
from apportion.service.jobs_service import JobsService, TaskReport
from apportion.service.ledger_service import LedgerService
from apportion.store import jobs_tables as jt

log = structlog.get_logger(__name__)

MISSED_FOR_SUSPECT = 3
LOG_STREAMS = ("stdout", "stderr")
MAX_LOG_READ = 1 << 20


@dataclass(frozen=True, slots=True)
class AgentSettings:
    """Server-side timing of agents; environment ``APPORTION_*`` overrides."""

    down_after_s: float = 60.0
    """Silence after which a node is down and its tasks are requeued (at
    least the agent's stop_after_disconnect plus one heartbeat)."""
    sweep_s: float = 1.0
    poll_hold_s: float = 20.0
    """How long an assignments long-poll is held open when nothing changes."""

    @classmethod
    def from_env(cls) -> AgentSettings:
        env = os.environ
        values: dict[str, float] = {}
        for key, name in (("down_after_s", "APPORTION_NODE_DOWN_AFTER"),
                          ("sweep_s", "APPORTION_NODE_SWEEP_INTERVAL"),
                          ("poll_hold_s", "APPORTION_POLL_HOLD")):
            if env.get(name):
                values[key] = float(env[name])
        return cls(**values)


@dataclass
class Session:
    """What the server knows of one node's agent."""

    node: str
    agent_id: str
    heartbeat_s: float
    stop_after_s: float
    last_seen: float
    version: int = 0
    event: asyncio.Event = field(default_factory=asyncio.Event)
    usage: dict[str, Any] = field(default_factory=dict)
    tasks: list[dict[str, Any]] = field(default_factory=list)
    prior_state: NodeState | None = None
    rescans: int = 0
    drain_deadline: float | None = None
    heartbeat_at: float | None = None


class AgentsService:
    """The server side of ``apportion agent``."""

    def __init__(self, ledger: LedgerService, jobs: JobsService, data_dir: Path,
                 settings: AgentSettings | None = None,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.ledger = ledger
        self.jobs = jobs
        self.settings = settings or AgentSettings()
        self.clock = clock
        self.monotonic = monotonic
        self.sessions: dict[str, Session] = {}
        self.epoch = uuid.uuid4().hex[:12]
        """Changes at every server start: an agent polling with another
        epoch is answered at once, whatever version it last saw."""
        self.logs_dir = data_dir / "logs"
        self.checkpoints_dir = data_dir / "checkpoints"
        self.stopping = asyncio.Event()
        """Set when the server begins to stop: held polls answer at once,
        so the graceful stop is not spent waiting them out (and cut with a 500)."""

    # -- wiring -----------------------------------------------------------

    def load(self) -> None:
        """Every node an agent registered is watched again from now on: its
        agent gets a full down_after to reconnect to this server."""
        now = self.monotonic()
        for node in self.ledger.ledger.nodes.values():
            agent = node.specs.get("agent")
            if isinstance(agent, dict):
                self.sessions[node.name] = Session(
                    node.name, str(agent.get("id", "")), float(agent.get("heartbeat_s", 10.0)),
                    float(agent.get("stop_after_disconnect_s", 60.0)), now)
        self.jobs.has_agent = self.has_agent
        self.jobs.on_nodes_changed = self.notify

    def stop_polls(self) -> None:
        """Answer every held long-poll now and every later one at once."""
        self.stopping.set()

    def has_agent(self, node: str) -> bool:
        return node in self.sessions

    def notify(self, nodes: Iterable[str]) -> None:
        """Wake the long-polls of these nodes' agents."""
        for name in nodes:
            session = self.sessions.get(name)
            if session is not None:
                session.version += 1
                session.event.set()
                session.event = asyncio.Event()

    def _session(self, node: str) -> Session:
        session = self.sessions.get(node)
        if session is None:
            self.ledger.ledger.node(node)  # NodeNotFound (404) first
            raise AgentUnknown(f"node {node} has no registered agent; register first",
                               node=node)
        return session

    # -- registration and heartbeats ----------------------------------------

    async def register(self, node: Node, agent: Mapping[str, Any]) -> Node:
        """Create or refresh the node as the agent found it. Devices that
        vanished while allocated stay (marked lost) until released: capacity
        never drops below what is granted."""
        specs = {**node.specs, "agent": dict(agent)}
        try:
            current = self.ledger.ledger.node(node.name)
        except NodeNotFound:
            created = await self.ledger.register_node(replace(node, specs=specs))
            self._open_session(created.name, agent)
            return created
        fresh, lost = _keep_allocated(self.ledger, current, replace(node, specs=specs))
        state = _rejoined(current.state, self.sessions.get(node.name))
        # Health stays as the health rules judged it from heartbeats; a lost
        # device is an event (and its readings vanish from the next heartbeat).
        updated = await self.ledger.update_node(replace(
            fresh, labels={**current.labels, **node.labels}, state=state,
            health=current.health))
        if lost:
            await self._device_lost(node.name, lost)
        self._open_session(node.name, agent)
        return updated

    def _open_session(self, name: str, agent: Mapping[str, Any]) -> None:
        old = self.sessions.get(name)
        session = Session(name, str(agent["id"]), float(agent.get("heartbeat_s", 10.0)),
                          float(agent.get("stop_after_disconnect_s", 60.0)), self.monotonic())
        if old is not None:
            session.version, session.event = old.version, old.event
            session.rescans, session.drain_deadline = old.rescans, old.drain_deadline
        self.sessions[name] = session
        self.notify([name])

    async def _device_lost(self, node: str, lost: dict[str, list[str]]) -> None:
        holders = {a.id: {r: list(ids) for r, ids in a.devices.items()}
                   for a in self.ledger.ledger.allocations_on(node)
                   if any(set(ids) & set(lost.get(r, ())) for r, ids in a.devices.items())}

        def write(conn: Any) -> None:
            self.ledger.event(conn, "node.device_lost", node, {
                "severity": "critical", "devices": lost, "allocations": holders})

        await self.ledger.committer.submit_alone(write)
        log.warning("device_lost", node=node, devices=lost, allocations=sorted(holders))

    async def heartbeat(self, node: str, agent_id: str, usage: dict[str, Any],
                        tasks: list[dict[str, Any]]) -> dict[str, Any]:
        """Note a node's live usage. A node whose agent has not registered
        (with this server) is told so and is not watched for silence."""
        session = self.sessions.get(node)
        if session is None:
            state = self.ledger.ledger.node(node).state  # NodeNotFound (404)
            return {"node_state": state.value, "epoch": self.epoch, "registered": False}
        session.last_seen = self.monotonic()
        session.heartbeat_at = self.clock()
        session.agent_id = agent_id
        session.usage, session.tasks = usage, tasks
        current = self.ledger.ledger.node(node)
        if current.state in (NodeState.SUSPECT, NodeState.DOWN):
            back = _rejoined(current.state, session)
            session.prior_state = None
            await self.ledger.set_node_state(node, back)
            log.info("node_back", node=node, state=back.value)
        return {"node_state": self.ledger.ledger.node(node).state.value,
                "epoch": self.epoch, "seq": session.version, "registered": True}

    async def assignments(self, node: str, *, after: int, epoch: str | None, wait: float,
                          gone: Callable[[], Awaitable[None]] | None = None) -> dict[str, Any]:
        """The node's desired state, once it is newer than ``after`` (or the
        hold time passed, or the agent hung up: ``gone``): a long-poll."""
        session = self._session(node)
        session.last_seen = self.monotonic()
        if epoch == self.epoch and session.version <= after and wait > 0:
            await _first(session.event.wait(), self.stopping.wait(),
                         gone() if gone else None, timeout=min(wait, self.settings.poll_hold_s))
        session = self._session(node)
        return {"epoch": self.epoch, "seq": session.version,
                "node_state": self.ledger.ledger.node(node).state.value,
                "rescan": session.rescans, "tasks": self.jobs.assignments(node)}

    async def report(self, node: str, task_id: str, report: TaskReport) -> dict[str, Any]:
        session = self._session(node)
        session.last_seen = self.monotonic()
        if report.checkpoint is not None and not (self.checkpoints_dir / report.checkpoint
                                                  ).is_file():
            report = replace(report, checkpoint=None)
        return await self.jobs.task_report(node, task_id, report)

    # -- node operations ----------------------------------------------------

    async def rescan(self, node: str) -> int:
        session = self._session(node)
        session.rescans += 1
        self.notify([node])
        return session.rescans

    async def drain(self, node: str, deadline_s: float | None) -> Node:
        """No new work; what runs finishes, or is preempted (and requeued
        elsewhere) once ``deadline_s`` has passed."""
        updated = await self.ledger.set_node_state(node, NodeState.DRAINING)
        session = self.sessions.get(node)
        if session is not None:
            session.prior_state = None
            session.drain_deadline = None if deadline_s is None else self.clock() + deadline_s
        elif deadline_s is not None:
            await self.jobs.stop_node_tasks(node, "preempted", f"node {node} drained")
        return updated

    async def set_state(self, node: str, state: NodeState) -> Node:
        session = self.sessions.get(node)
        if session is not None:
            session.prior_state = None
            session.drain_deadline = None
        updated = await self.ledger.set_node_state(node, state)
        self.jobs.kick()
        return updated

    # -- lost nodes ------------------------------------------------------------

    def down_after(self, session: Session) -> float:
        return max(self.settings.down_after_s, session.stop_after_s + session.heartbeat_s)

    async def sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_s)
            try:
                await self.sweep()
            except Exception as exc:
                log.exception("sweep_failed", error=repr(exc))

    async def sweep(self) -> None:
        """Mark silent nodes suspect, then down (their tasks lost), and stop
        what still runs on nodes whose drain deadline passed."""
        now = self.monotonic()
        for session in list(self.sessions.values()):
            try:
                node = self.ledger.ledger.node(session.node)
            except NodeNotFound:
                self.sessions.pop(session.node, None)
                continue
            silent = now - session.last_seen
            if node.state is not NodeState.DOWN and silent > self.down_after(session):
                await self._node_down(session, node, silent)
            elif node.state not in (NodeState.SUSPECT, NodeState.DOWN) and \
                    silent > MISSED_FOR_SUSPECT * session.heartbeat_s:
                session.prior_state = node.state
                await self.ledger.set_node_state(node.name, NodeState.SUSPECT)
                log.warning("node_suspect", node=node.name, silent_s=round(silent, 1))
            await self._drain_due(session)

    async def _node_down(self, session: Session, node: Node, silent: float) -> None:
        if session.prior_state is None and node.state is not NodeState.SUSPECT:
            session.prior_state = node.state
        await self.ledger.set_node_state(node.name, NodeState.DOWN)
        lost = await self.jobs.node_lost(node.name)
        for alloc in self.ledger.ledger.allocations_on(node.name):
            # Plain allocations on the node are lost with it too.
            with contextlib.suppress(ApportionError):
                await self.ledger.release(alloc.id, ReleaseReason.NODE_LOST)
        log.warning("node_down", node=node.name, silent_s=round(silent, 1), tasks_lost=lost)

    async def _drain_due(self, session: Session) -> None:
        deadline = session.drain_deadline
        if deadline is not None and self.clock() >= deadline:
            session.drain_deadline = None
            await self.jobs.stop_node_tasks(session.node, "preempted",
                                            f"node {session.node} drained")

    def describe(self, node: str) -> dict[str, Any]:
        session = self._session(node)
        silent = self.monotonic() - session.last_seen
        return {"node": node, "agent_id": session.agent_id, "heartbeat_s": session.heartbeat_s,
                "stop_after_disconnect_s": session.stop_after_s,
                "silent_s": round(silent, 3), "down_after_s": self.down_after(session),
                "last_heartbeat": session.heartbeat_at, "usage": session.usage,
                "tasks": session.tasks, "draining_until": session.drain_deadline}

    # -- logs and checkpoints ------------------------------------------------------

    def _task_for(self, node: str, task_id: str) -> tuple[str, str]:
        """(job id, node) of a task this node runs; NotFound otherwise."""
        found = self.jobs.find_task(task_id)
        if found is None or found[1].node != node:
            raise NotFound(f"task {task_id} is not running on node {node}", id=task_id)
        return found[1].job_id, node

    def log_path(self, job_id: str, task_id: str, stream: str) -> Path:
        if stream not in LOG_STREAMS:
            raise InvalidInput(f"stream: use {' or '.join(LOG_STREAMS)}", field="stream")
        return self.logs_dir / _safe(job_id) / f"{_safe(task_id)}.{stream}"

    async def append_log(self, node: str, task_id: str, stream: str, offset: int,
                         data: bytes) -> int:
        """Store log bytes the agent read at ``offset``; resending is harmless."""
        self._session(node)
        job_id, _ = self._task_for(node, task_id)
        path = self.log_path(job_id, task_id, stream)
        return await asyncio.to_thread(_write_at, path, offset, data)

    async def read_log(self, job_id: str, task_id: str, stream: str, offset: int,
                       limit: int) -> tuple[bytes, int]:
        path = self.log_path(job_id, task_id, stream)
        return await asyncio.to_thread(_read_at, path, offset, min(limit, MAX_LOG_READ))

    def checkpoint_name(self, job_id: str, task_id: str) -> str:
        return f"{_safe(job_id)}/{_safe(task_id)}.tar"

    async def save_checkpoint(self, node: str, task_id: str,
                              chunks: AsyncIterator[bytes]) -> tuple[str, int]:
        """Stream an agent's checkpoint tar to the store; returns its name."""
        self._session(node)
        job_id, _ = self._task_for(node, task_id)
        name = self.checkpoint_name(job_id, task_id)
        path = self.checkpoints_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".part")
        size = 0
        with tmp.open("wb") as fh:
            async for chunk in chunks:
                size += len(chunk)
                await asyncio.to_thread(fh.write, chunk)
            await asyncio.to_thread(os.fsync, fh.fileno())
        tmp.replace(path)
        return name, size

    async def checkpoint_file(self, task_id: str) -> Path:
        """The stored checkpoint a task left."""
        row: jt.TaskRow | None = await self.ledger.read(lambda c: jt.load_task(c, task_id))
        if row is None or not row.checkpoint:
            raise NotFound(f"task {task_id} left no checkpoint", id=task_id)
        path = self.checkpoints_dir / row.checkpoint
        if not path.is_file():
            raise NotFound(f"checkpoint of task {task_id} is missing from the store",
                           id=task_id)
        return path


async def _first(*waits: Awaitable[Any] | None, timeout: float) -> None:
    """Wait until the first of ``waits`` finishes, or ``timeout``."""
    tasks = [asyncio.ensure_future(w) for w in waits if w is not None]
    try:
        await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


def _rejoined(state: NodeState, session: Session | None) -> NodeState:
    """The state a node returns to when its agent is heard again."""
    if state not in (NodeState.SUSPECT, NodeState.DOWN):
        return state
    prior = session.prior_state if session is not None else None
    if prior is None or prior in (NodeState.SUSPECT, NodeState.DOWN):
        return NodeState.READY
    return prior


def _keep_allocated(ledger: LedgerService, current: Node,
                    fresh: Node) -> tuple[Node, dict[str, list[str]]]:
    """``fresh`` with every allocated device and amount it lacks put back
    (devices marked ``lost``), and the lost device ids per resource."""
    held: dict[str, set[str]] = {}
    for alloc in ledger.ledger.allocations_on(current.name):
        for resource, ids in alloc.devices.items():
            held.setdefault(resource, set()).update(ids)
    devices = {r: list(ds) for r, ds in fresh.devices.items()}
    lost: dict[str, list[str]] = {}
    for resource, wanted in held.items():
        offered = {d.id for d in devices.get(resource, [])}
        missing = sorted(wanted - offered)
        if not missing:
            continue
        lost[resource] = missing
        old = {d.id: d for d in current.devices.get(resource, ())}
        devices.setdefault(resource, []).extend(
            replace(old[i], attrs={**old[i].attrs, "lost": True}) if i in old
            else Device(i, attrs={"lost": True}) for i in missing)
    resources = dict(fresh.resources)
    for resource, ds in devices.items():
        resources[resource] = len(ds)
    for resource, used in ledger.ledger.allocated(current.name).items():
        if used and resources.get(resource, 0) < used:
            resources[resource] = used  # never a negative balance
    kept = {r: tuple(ds) for r, ds in devices.items()}
    return replace(fresh, resources=resources, devices=kept), lost


def _safe(name: str) -> str:
    """A path component from an id (ids are hex and dashes; refuse others)."""
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise InvalidInput(f"{name!r} is not a valid id", field="id")
    return name


def _write_at(path: Path, offset: int, data: bytes) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as fh:
        size = fh.tell()
        if offset < size:
            data = data[size - offset:]  # already stored: resent after a lost answer
        fh.write(data)
        return fh.tell()


def _read_at(path: Path, offset: int, limit: int) -> tuple[bytes, int]:
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            data = fh.read(limit)
            return data, offset + len(data)
    except FileNotFoundError:
        return b"", offset
