"""Agents: registration, heartbeats, assignments, task reports, lost nodes.

Any server may answer any agent: what the cluster must know of an agent
lives in the store (``agent_sessions``: when it was last heard, its
heartbeat period, its latest usage, a drain's deadline), and the tasks it
must run come from the jobs the store holds. Each server keeps, per node, a
version number with an event that wakes the agent's long-poll when what the
node must run changes; the answer to a poll is the node's whole desired
state, not a message queue, so a lost answer or an agent moving to another
server costs nothing.

Heartbeats are noted in memory and written in one statement per second
(``flush``); the leader judges silence from the store, so a heartbeat that
reached any server counts. A node whose agent falls silent is ``suspect``
after three missed heartbeats and ``down`` after ``down_after_s``, never
before the agent's own ``stop_after_disconnect`` has passed, because until
then the agent may still be running the tasks; only then are the tasks ended
as ``lost`` and requeued, so a partition never runs one task twice. A newly
elected leader counts silence from its election at the earliest: agents of
a dead server need a moment to find another.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import sqlalchemy as sa
import structlog

from apportion.core.model import Node, NodeState
from apportion.core.records import SessionRow
from apportion.exceptions import AgentUnknown, ApportionError, NodeExists, NodeNotFound
from apportion.protocol import DesiredState
from apportion.service.agent_state import (
    AgentSettings,
    Session,
    Waker,
    keep_allocated,
    rejoined,
)
from apportion.service.auth import Authenticator
from apportion.service.health_service import HealthService
from apportion.service.job_specs import AGENT_LABEL
from apportion.service.jobs import JobsService, TaskReport
from apportion.service.join_tokens import JoinTokens
from apportion.service.ledger_service import LedgerService
from apportion.service.task_files import TaskFiles
from apportion.service.unit_of_work import UnitOfWork
from apportion.store import agent_sessions as store

log = structlog.get_logger(__name__)

MISSED_FOR_SUSPECT = 3


@dataclass(frozen=True, slots=True)
class Joined:
    node: Node
    pool: str
    agent_token: str


class AgentsService:
    """The server side of ``apportion agent``."""

    def __init__(self, uow: UnitOfWork, ledger: LedgerService, jobs: JobsService,
                 health: HealthService | None,
                 *, server_id: str, epoch: Callable[[], int | None] = lambda: None,
                 auth: Authenticator | None = None, join_tokens: JoinTokens | None = None,
                 files: TaskFiles | None = None,
                 leader_since: Callable[[], float | None] = lambda: None,
                 settings: AgentSettings | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.uow = uow
        self.ledger = ledger
        self.jobs = jobs
        self.health = health
        self.auth = auth
        self.join_tokens = join_tokens
        self.files = files
        self.server_id = server_id
        self.leader_epoch = epoch
        self.leader_since = leader_since
        self.settings = settings or AgentSettings()
        self.clock = clock
        self.sessions: dict[str, Session] = {}
        self._wakers: dict[str, Waker] = {}
        self._seen: dict[str, dict[str, Any]] = {}
        """Heartbeats and polls heard since the last flush, by node."""
        self._judged: dict[str, float] = {}
        """The leader's health judgements: the heartbeat time last judged per node."""
        self.epoch = uuid.uuid4().hex[:12]
        """Changes at every server start: an agent polling with another
        epoch is answered at once, whatever version it last saw."""
        self.stopping = asyncio.Event()
        """Set when the server begins to stop: held polls answer at once,
        so the graceful stop is not spent waiting them out (and cut with a 500)."""
        jobs.cache.node_listeners.append(self.notify)

    # -- wiring -----------------------------------------------------------

    def load(self) -> None:
        """Every agent's session as stored."""
        with self.uow.engine.connect() as conn:
            rows = store.load(conn)
        self.sessions = {r.node: Session.of(r) for r in rows}

    def stop_polls(self) -> None:
        """Answer every held long-poll now and every later one at once."""
        self.stopping.set()

    def has_agent(self, node: str) -> bool:
        return node in self.sessions

    def notify(self, nodes: Iterable[str]) -> None:
        """Wake the long-polls of these nodes' agents."""
        for name in nodes:
            waker = self._wakers.get(name)
            if waker is not None:
                waker.wake()

    def _session(self, node: str) -> Session:
        session = self.sessions.get(node)
        if session is None:
            self.ledger.node(node)  # NodeNotFound (404) first
            raise AgentUnknown(f"node {node} has no registered agent; register first",
                               node=node)
        return session

    async def follow(self, events: Sequence[tuple[int, str, str, str]]) -> None:
        """Read again the sessions other servers changed, and wake the polls
        of nodes they changed."""
        nodes = {subject for _, kind, subject, _ in events
                 if kind.startswith(("agent.", "node."))}
        if not nodes:
            return
        names = sorted(nodes)
        rows = {r.node: r for r in await self.uow.read(lambda c: store.load(c, names))}
        for name in names:
            row = rows.get(name)
            if row is None:
                self.sessions.pop(name, None)
            else:
                self._merge(row)
        self.notify(names)

    def _merge(self, row: SessionRow) -> None:
        """Take a stored session, keeping what this server heard since."""
        fresh = Session.of(row)
        mine = self.sessions.get(row.node)
        if mine is not None and mine.last_seen > fresh.last_seen:
            fresh.last_seen = mine.last_seen
            if (mine.heartbeat_at or 0) > (fresh.heartbeat_at or 0):
                fresh.heartbeat_at, fresh.usage, fresh.tasks = (
                    mine.heartbeat_at, mine.usage, mine.tasks)
        self.sessions[row.node] = fresh

    # -- registration and heartbeats ----------------------------------------

    async def register(self, node: Node, agent: Mapping[str, Any]) -> Node:
        """Create or refresh the node as the agent found it. Devices that
        vanished while allocated stay (marked lost) until released: capacity
        never drops below what is granted."""
        specs = {**node.specs, "agent": dict(agent)}
        # Jobs with a command go only where an agent runs them (job_specs).
        node = replace(node, labels={**node.labels, AGENT_LABEL: "true"})
        try:
            current = self.ledger.node(node.name)
        except NodeNotFound:
            created = await self.ledger.register_node(replace(node, specs=specs))
            await self._open_session(created.name, agent)
            return created
        fresh, lost = keep_allocated(self.ledger, current, replace(node, specs=specs))
        state = rejoined(current.state, self.sessions.get(node.name))
        # Health stays as the health rules judged it from heartbeats; a lost
        # device is an event (and its readings vanish from the next heartbeat).
        updated = await self.ledger.update_node(replace(
            fresh, labels={**current.labels, **node.labels}, state=state,
            health=current.health))
        if lost:
            await self._device_lost(node.name, lost)
        await self._open_session(node.name, agent)
        return updated

    async def join(self, token: str, node: Node, agent: Mapping[str, Any]) -> Joined:
        """A node a provider made for a pool registers with its one-time join
        token: the token is spent, the node joins with the pool's labels, and
        an agent token is minted for it (its credential from now on)."""
        if node.name in self.ledger.nodes:
            raise NodeExists(f"node {node.name} already exists; a join token registers a new "
                             "node", node=node.name)
        if self.join_tokens is None or self.auth is None:
            raise AgentUnknown("this server takes no join tokens", node=node.name)
        record = await asyncio.to_thread(self.join_tokens.redeem, token, node.name)
        registered = await self.register(replace(node, labels={**node.labels,
                                                               **record.labels}), agent)
        agent_token, _ = await asyncio.to_thread(self.auth.create, node.name, "agent")

        def write(conn: sa.Connection) -> None:
            self.uow.event(conn, "node.joined", node.name, {"pool": record.pool,
                                                               "join_token": record.id})

        await self.uow.write(write)
        return Joined(registered, record.pool, agent_token)

    async def _open_session(self, name: str, agent: Mapping[str, Any]) -> None:
        now = self.clock()
        row = SessionRow(name, str(agent["id"]), float(agent.get("heartbeat_s", 10.0)),
                         float(agent.get("stop_after_disconnect_s", 60.0)), self.server_id,
                         now, now, None, None, None, 0, None, None)

        def write(conn: sa.Connection) -> SessionRow | None:
            store.open_session(conn, row)
            self.uow.event(conn, "agent.registered", name, {"agent": row.agent_id,
                                                               "server": self.server_id})
            return store.load_one(conn, name)

        stored = await self.uow.write(write)
        if stored is not None:
            self._merge(stored)
        self.notify([name])

    async def _device_lost(self, node: str, lost: dict[str, list[str]]) -> None:
        holders = {a.id: {r: list(ids) for r, ids in a.devices.items()}
                   for a in self.ledger.allocations_on(node)
                   if any(set(ids) & set(lost.get(r, ())) for r, ids in a.devices.items())}

        def write(conn: Any) -> None:
            self.uow.event(conn, "node.device_lost", node, {
                "severity": "critical", "devices": lost, "allocations": holders})

        await self.uow.write(write)
        log.warning("device_lost", node=node, devices=lost, allocations=sorted(holders))

    async def heartbeat(self, node: str, agent_id: str, usage: dict[str, Any],
                        tasks: list[dict[str, Any]]) -> dict[str, Any]:
        """Note a node's live usage. A node whose agent has not registered is
        told so, and its agent registers again."""
        session = self.sessions.get(node)
        if session is None:
            state = self.ledger.node(node).state  # NodeNotFound (404)
            if self.health is not None and self.leader_epoch() is not None:
                await self.health.observe(node, usage)  # readings count all the same
            return {"node_state": state.value, "epoch": self.epoch, "registered": False}
        now = self.clock()
        session.last_seen = session.heartbeat_at = now
        session.agent_id = agent_id
        session.usage, session.tasks = usage, tasks
        seen = {"node": node, "last_seen": now, "server_id": self.server_id,
                "heartbeat_at": now, "agent_id": agent_id}
        if self.uow.shared:
            # Readings only other servers read (the leader judges health from
            # them); on SQLite they would cost a JSON row write per beat.
            seen["usage"], seen["tasks"] = usage, tasks
        self._seen[node] = seen
        if self.leader_epoch() is not None:
            # The leader judges at once; other servers leave it to the leader's sweep.
            await self._judge(node, session)
            await self._bring_back(node, session)
        return {"node_state": self.ledger.node(node).state.value,
                "epoch": self.epoch, "seq": self._waker(node).version, "registered": True}

    async def _judge(self, node: str, session: Session) -> None:
        if self.health is not None and session.heartbeat_at is not None:
            self._judged[node] = session.heartbeat_at
            await self.health.observe(node, session.usage, interval_s=session.heartbeat_s,
                                      at=session.heartbeat_at)

    async def _bring_back(self, node: str, session: Session) -> None:
        current = self.ledger.node(node)
        if current.state in (NodeState.SUSPECT, NodeState.DOWN):
            back = rejoined(current.state, session)
            session.prior_state = None
            await self.ledger.set_node_state(node, back)
            await self._save(node, prior_state=None)
            log.info("node_back", node=node, state=back.value)

    def _heard(self, node: str) -> None:
        """A poll or report: the agent is alive (no usage to judge)."""
        session = self.sessions.get(node)
        if session is None:
            return
        now = self.clock()
        session.last_seen = now
        seen = self._seen.get(node)
        if seen is None:
            self._seen[node] = {"node": node, "last_seen": now, "server_id": self.server_id}
        else:
            seen["last_seen"] = now

    async def flush(self) -> None:
        """Write what this server heard of agents since the last flush."""
        if not self._seen:
            return
        seen, self._seen = list(self._seen.values()), {}
        await self.uow.write(lambda conn: store.touch_many(conn, seen))

    async def flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.flush_s)
            try:
                await self.flush()
            except Exception as exc:
                log.warning("heartbeat_flush_failed", error=repr(exc))

    def _waker(self, node: str) -> Waker:
        waker = self._wakers.get(node)
        if waker is None:
            waker = self._wakers[node] = Waker()
        return waker

    async def assignments(self, node: str, *, after: int, epoch: str | None, wait: float,
                          gone: Callable[[], Awaitable[None]] | None = None) -> DesiredState:
        """The node's desired state, once it is newer than ``after`` (or the
        hold time passed, or the agent hung up: ``gone``): a long-poll."""
        self._session(node)
        self._heard(node)
        waker = self._waker(node)
        if epoch == self.epoch and waker.version <= after and wait > 0:
            await _first(waker.event.wait(), self.stopping.wait(),
                         gone() if gone else None, timeout=min(wait, self.settings.poll_hold_s))
        session = self._session(node)
        return DesiredState(self.epoch, waker.version, self.ledger.node(node).state.value,
                            session.rescans, tuple(await self.jobs.assignments(node)))

    async def reports(self, node: str, reports: list[tuple[str, TaskReport, bool]]
                      ) -> list[dict[str, Any] | ApportionError]:
        """Several reports of one node; applied side by side, so their
        transitions share a commit. A report refused (a task this server does
        not know) is answered with its error and refuses none of the others."""
        answers = await asyncio.gather(*(
            self.report(node, task_id, report, checkpoint_saved=saved)
            for task_id, report, saved in reports), return_exceptions=True)
        for answer in answers:
            if isinstance(answer, BaseException) and not isinstance(answer, ApportionError):
                raise answer
        return [a for a in answers if not isinstance(a, BaseException) or
                isinstance(a, ApportionError)]

    async def report(self, node: str, task_id: str, report: TaskReport, *,
                     checkpoint_saved: bool = False) -> dict[str, Any]:
        """Apply an agent's report on one task. ``checkpoint_saved``: the
        agent uploaded a checkpoint for it (used only if it is stored)."""
        self._session(node)
        self._heard(node)
        if checkpoint_saved and self.files is not None:
            found = self.jobs.find_task(task_id)
            if found is not None:
                key = self.files.checkpoint_key(found[1].job_id, task_id)
                if await self.files.has_checkpoint(key):
                    report = replace(report, checkpoint=key)
        answer = await self.jobs.task_report(node, task_id, report)
        if self.health is not None and self.leader_epoch() is not None \
                and answer.get("state") == "failed" and report.exit_code is None \
                and not report.memory_exceeded:
            self.health.record_failure(node)  # the node could not start the process
        return answer

    # -- node operations ----------------------------------------------------

    async def rescan(self, node: str) -> int:
        self._session(node)

        def write(conn: sa.Connection) -> int | None:
            count = store.add_rescan(conn, node)
            self.uow.event(conn, "agent.rescan", node, {"rescans": count})
            return count

        count = await self.uow.write(write)
        session = self._session(node)
        session.rescans = int(count or session.rescans + 1)
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
            await self._save(node, prior_state=None, drain_deadline=session.drain_deadline)
        elif deadline_s is not None:
            await self.jobs.stop_node_tasks(node, "preempted", f"node {node} drained",
                                            by_leader=False)
        return updated

    async def set_state(self, node: str, state: NodeState) -> Node:
        session = self.sessions.get(node)
        if session is not None:
            session.prior_state = None
            session.drain_deadline = None
            await self._save(node, prior_state=None, drain_deadline=None)
        updated = await self.ledger.set_node_state(node, state)
        self.jobs.kick()
        return updated

    async def _save(self, node: str, **values: Any) -> None:
        def write(conn: sa.Connection) -> None:
            store.update(conn, node, **values)
            self.uow.event(conn, "agent.session", node, {})

        await self.uow.write(write)

    # -- lost nodes (the leader) ------------------------------------------------

    def down_after(self, session: Session) -> float:
        return max(self.settings.down_after_s, session.stop_after_s + session.heartbeat_s) \
            + self.settings.flush_s

    def suspect_after(self, session: Session) -> float:
        """Three missed heartbeats, plus the time a heartbeat heard by another
        server may take to reach the store (its flush)."""
        return MISSED_FOR_SUSPECT * session.heartbeat_s + self.settings.flush_s

    async def sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_s)
            if self.leader_epoch() is None:
                continue
            try:
                await self.sweep()
            except Exception as exc:
                log.exception("sweep_failed", error=repr(exc))

    async def sweep(self) -> None:
        """Mark silent nodes suspect, then down (their tasks lost), bring back
        nodes heard again, judge the health of heartbeats other servers
        received, and stop what still runs where a drain's deadline passed."""
        if self.uow.shared:
            await self._sync_sessions()
        else:
            # The only server: its memory holds every session, and reading
            # them all back each second cost a tenth of its heartbeat CPU.
            nodes = self.ledger.nodes  # a copy each time it is read
            for name in [n for n in self.sessions if n not in nodes]:
                self.sessions.pop(name, None)
        now = self.clock()
        since = self.leader_since() or 0.0
        for session in list(self.sessions.values()):
            try:
                node = self.ledger.node(session.node)
            except NodeNotFound:
                continue
            silent = now - max(session.last_seen, since)
            if node.state is not NodeState.DOWN and silent > self.down_after(session):
                await self._node_down(session, node, silent)
            elif node.state is NodeState.DOWN and silent > self.down_after(session) \
                    and self.ledger.allocations_on(node.name):
                # Down and still holding: a leader deposed between marking the
                # node down and ending its work left the rest to this one.
                lost = await self.jobs.node_lost(node.name)
                log.warning("node_down_finished", node=node.name, tasks_lost=lost)
            elif node.state not in (NodeState.SUSPECT, NodeState.DOWN) and \
                    silent > self.suspect_after(session):
                session.prior_state = node.state
                await self.ledger.set_node_state(node.name, NodeState.SUSPECT)
                await self._save(node.name, prior_state=node.state.value)
                log.warning("node_suspect", node=node.name, silent_s=round(silent, 1))
            elif node.state in (NodeState.SUSPECT, NodeState.DOWN) and \
                    now - session.last_seen <= session.heartbeat_s * 1.5:
                await self._bring_back(node.name, session)
            await self._drain_due(session)
        if await self.jobs.stop_unclaimed(self.settings.pickup_s):
            log.warning("tasks_not_picked_up", after_s=self.settings.pickup_s)

    def _merge_quietly(self, row: SessionRow) -> None:
        """A stored session without its usage, merged into the one in memory."""
        mine = self.sessions.get(row.node)
        if mine is None:
            self.sessions[row.node] = Session.of(row)
            return
        mine.last_seen = max(mine.last_seen, row.last_seen)
        mine.heartbeat_s, mine.stop_after_s = row.heartbeat_s, row.stop_after_s
        mine.rescans, mine.drain_deadline = row.rescans, row.drain_deadline
        mine.prior_state = NodeState(row.prior_state) if row.prior_state else None

    async def _sync_sessions(self) -> None:
        """Take what other servers heard of agents, and judge their heartbeats."""
        rows = await self.uow.read(lambda c: store.load(c, with_usage=False))
        for row in rows:
            self._merge_quietly(row)
        for name in set(self.sessions) - {r.node for r in rows}:
            self.sessions.pop(name, None)
        await self._judge_remote([r for r in rows if (r.heartbeat_at or 0)
                                  > self._judged.get(r.node, 0)])

    async def _judge_remote(self, rows: list[SessionRow]) -> None:
        """Judge the heartbeats other servers received since the last sweep."""
        if not rows or self.health is None:
            return
        names = [r.node for r in rows]
        full = await self.uow.read(lambda c: store.load(c, names))
        for row in full:
            session = self.sessions.get(row.node)
            if session is None or row.heartbeat_at is None:
                continue
            if row.heartbeat_at > (session.heartbeat_at or 0):
                session.heartbeat_at, session.usage = row.heartbeat_at, row.usage or {}
                session.tasks = row.tasks or []
            await self._judge(row.node, session)

    async def _node_down(self, session: Session, node: Node, silent: float) -> None:
        if session.prior_state is None and node.state is not NodeState.SUSPECT:
            session.prior_state = node.state
        await self.ledger.set_node_state(node.name, NodeState.DOWN)
        if session.prior_state is not None:
            await self._save(node.name, prior_state=session.prior_state.value)
        lost = await self.jobs.node_lost(node.name)
        log.warning("node_down", node=node.name, silent_s=round(silent, 1), tasks_lost=lost)

    async def _drain_due(self, session: Session) -> None:
        deadline = session.drain_deadline
        if deadline is not None and self.clock() >= deadline:
            session.drain_deadline = None
            await self._save(session.node, drain_deadline=None)
            await self.jobs.stop_node_tasks(session.node, "preempted",
                                            f"node {session.node} drained", by_leader=True)

    def describe(self, node: str) -> dict[str, Any]:
        session = self._session(node)
        silent = self.clock() - session.last_seen
        return {"node": node, "agent_id": session.agent_id, "heartbeat_s": session.heartbeat_s,
                "stop_after_disconnect_s": session.stop_after_s,
                "silent_s": round(silent, 3), "down_after_s": self.down_after(session),
                "last_heartbeat": session.heartbeat_at, "usage": session.usage,
                "tasks": session.tasks, "draining_until": session.drain_deadline}

    def silences(self) -> dict[str, float]:
        """Seconds since each node's agent was last heard."""
        now = self.clock()
        return {name: now - s.last_seen for name, s in self.sessions.items()}


async def _first(*waits: Awaitable[Any] | None, timeout: float) -> None:
    """Wait until the first of ``waits`` finishes, or ``timeout``."""
    tasks = [asyncio.ensure_future(w) for w in waits if w is not None]
    try:
        await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
