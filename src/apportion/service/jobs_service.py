"""Jobs and queues: submit, cancel, explain, and the scheduling loop.

Every cycle builds a ``ClusterState`` from the ledger (nodes, and every
active allocation as a running job), asks the core's ``schedule_cycle`` what
starts, and makes each decision real through the ledger service: a task's
resources are granted exactly as the core placed them, a gang's tasks all or
none. Job and task rows record the outcome; the allocations stay the truth
about resources. Agents (``apportion agent``) run the tasks of jobs that
have a command; a job without one is a pure resource lease.

A task that runs a process on an agent holds its allocation until the agent
says the process is gone: ending it (cancel, preemption, drain) asks the
agent to stop it, and the allocation is released when the agent reports the
exit, or when the node is declared lost. So an allocation always outlives
the process it names, and a preempting job starts on devices only after the
victim has left them (``Switch``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shlex
import signal
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import sqlalchemy as sa
import structlog

from apportion.core.model import Allocation, Node, ReleaseReason
from apportion.core.resources import format_vector
from apportion.core.scheduling import (
    ClusterState,
    CycleResult,
    Explanation,
    Job,
    JobState,
    Preemption,
    Queue,
    RunningJob,
    RuntimeHistory,
    SchedulerConfig,
    TaskPlacement,
    TaskSpec,
    explain,
    schedule_cycle,
    validate_job,
)
from apportion.exceptions import ApportionError, InvalidInput, NotFound
from apportion.service.job_specs import job_from_spec, parse_duration, queue_from_row
from apportion.service.ledger_service import LedgerService
from apportion.store import jobs_tables as jt
from apportion.store.jobs_tables import JobRow, QueueRow, TaskRow
from apportion.store.usage_tables import UsageRow, insert_usage

log = structlog.get_logger(__name__)

JOB_LABEL = "apportion.job"
TASK_LABEL = "apportion.task"
LEASE_QUEUE = "(allocations)"
"""The queue a plain allocation (no job) counts in; no named queue can be called so."""
WAITING = (JobState.PENDING, JobState.PREEMPTED)
LIVE = (JobState.PENDING, JobState.PREEMPTED, JobState.SCHEDULED, JobState.RUNNING)
TERMINAL_JOB = (JobState.SUCCEEDED.value, JobState.FAILED.value, JobState.CANCELLED.value)
ACTIVE_TASK = ("scheduled", "starting", "running")
TASK_ENDS = ("succeeded", "failed", "cancelled", "preempted", "lost")
DEFAULT_QUEUE = "default"
MAX_BACKOFF_S = 300.0
RELEASE_FOR = {
    "succeeded": ReleaseReason.COMPLETED,
    "failed": ReleaseReason.FAILED,
    "cancelled": ReleaseReason.CANCELLED,
    "preempted": ReleaseReason.PREEMPTED,
    "lost": ReleaseReason.NODE_LOST,
}
_PROGRESS = {"scheduled": 0, "starting": 1, "running": 2}


def new_job_id() -> str:
    return "j-" + uuid.uuid4().hex[:12]


@dataclass(frozen=True, slots=True)
class RunPolicy:
    """How a job's processes are restarted and stopped (from its spec)."""

    restart: str = "never"
    max_retries: int = 0
    backoff_s: float = 1.0
    stop_signal: str = "SIGTERM"
    stop_grace_s: float = 10.0

    @classmethod
    def of(cls, spec: Mapping[str, Any]) -> RunPolicy:
        restart = spec.get("restart") or {}
        policy = str(restart.get("policy", "never"))
        if policy not in ("never", "on-failure"):
            raise InvalidInput("restart.policy: use never or on-failure", field="restart.policy")
        name = str(spec.get("stop_signal") or "SIGTERM").upper()
        name = name if name.startswith("SIG") else "SIG" + name
        if name not in signal.Signals.__members__:
            raise InvalidInput(f"stop_signal: {name} is not a signal", field="stop_signal")
        default = 3 if policy == "on-failure" else 0
        return cls(
            policy,
            int(restart.get("max_retries", default)),
            parse_duration(restart.get("backoff"), "restart.backoff") or 1.0,
            name,
            parse_duration(spec.get("stop_grace"), "stop_grace") or 10.0,
        )

    def backoff(self, retry: int) -> float:
        return float(min(MAX_BACKOFF_S, self.backoff_s * 2 ** max(0, retry - 1)))


@dataclass
class LiveJob:
    """A job that is waiting or running: its row, its core value, its tasks
    (active ones, and succeeded ones of a bag that is still running)."""

    row: JobRow
    job: Job
    tasks: list[TaskRow] = field(default_factory=list)
    not_before: float = 0.0
    """Restart backoff: the job waits until then."""
    failures: int = 0
    checkpoints: dict[int, str] = field(default_factory=dict)
    """Task index to the id of the task whose checkpoint it resumes from."""

    @property
    def state(self) -> JobState:
        return JobState(self.row.state)

    @property
    def ending(self) -> bool:
        """Cancelled or failed already, while its last processes stop."""
        return self.row.state in TERMINAL_JOB

    @property
    def policy(self) -> RunPolicy:
        return RunPolicy.of(self.row.spec)

    def active(self) -> list[TaskRow]:
        return [t for t in self.tasks if t.state in ACTIVE_TASK]

    def unit_of(self, task: TaskRow) -> str:
        if len(self.job.units()) == 1:
            return self.job.id
        return f"{self.job.id}#{task.index}"

    def open_units(self) -> list[Job]:
        """The parts of the job still to be placed: the whole job (gang or one
        task) or each unplaced task of a bag."""
        if self.ending:
            return []
        placed = {t.index for t in self.tasks if t.state in (*ACTIVE_TASK, "succeeded")}
        units = self.job.units()
        if len(units) == 1:
            return [] if placed else list(units)
        return [u for i, u in enumerate(units) if i not in placed]


@dataclass
class Switch:
    """A preempting unit waiting for its victims' processes to exit; it
    starts on exactly the placement the scheduler chose, as soon as they are
    gone, before any other job can take what they free."""

    unit_id: str
    tasks: tuple[TaskPlacement, ...]
    victims: set[str]
    decided_at: float


@dataclass(frozen=True, slots=True)
class TaskReport:
    """What an agent says about one of its tasks."""

    state: str
    """``starting``, ``running`` or ``exited``."""
    exit_code: int | None = None
    signalled: bool = False
    """The agent signalled the process (a stop the server asked for)."""
    memory_exceeded: bool = False
    lost: bool = False
    """The agent stopped it on its own, cut off from the server too long."""
    reason: str | None = None
    checkpoint: str | None = None
    times: Mapping[str, float] = field(default_factory=dict)
    usage: Mapping[str, float] = field(default_factory=dict)
    """What the task used, measured by the agent (exit reports only)."""


@dataclass(frozen=True, slots=True)
class _JobChange:
    row: JobRow
    finished: bool
    stop: list[TaskRow] = field(default_factory=list)
    stop_state: str = "cancelled"
    stop_reason: str = ""


class JobsService:
    """Submission, cancellation and the scheduling loop over one ledger."""

    def __init__(self, ledger: LedgerService, config: SchedulerConfig,
                 clock: Callable[[], float] = time.time) -> None:
        self.ledger = ledger
        self.config = config
        self.clock = clock
        self.live: dict[str, LiveJob] = {}
        self.queues: dict[str, Queue] = {}
        self.history = RuntimeHistory()
        self.last_cycle: CycleResult | None = None
        self.cycles = 0
        self.switches: dict[str, Switch] = {}
        self.has_agent: Callable[[str], bool] = lambda node: False
        """Whether an agent runs this node's processes (set by the agents service)."""
        self.on_nodes_changed: Callable[[Iterable[str]], None] = lambda nodes: None
        """Called when what a node must run changed (new task, stop asked)."""
        self.potential_nodes: Callable[[], Iterable[Node]] = lambda: ()
        """Nodes that do not exist yet but would be made for work that needs
        them (an ``auto`` node pool below its maximum; set by the scaling
        service). A submission is checked against them too, so a job that
        only a pool's nodes can hold waits for the pool instead of being
        refused; nothing is ever scheduled on them."""
        self._kick = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task_jobs: dict[str, str] = {}
        self._finishing: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()

    # -- start ------------------------------------------------------------

    def load(self) -> None:
        with self.ledger.engine.begin() as conn:
            rows = jt.load_queues(conn)
            if not any(r.name == DEFAULT_QUEUE for r in rows):
                now = self.clock()
                default = QueueRow(DEFAULT_QUEUE, {}, 1.0, None, None, now, now)
                jt.upsert_queue(conn, default)
                rows.append(default)
            live_rows = jt.load_jobs(conn, states=[s.value for s in LIVE], limit=10_000_000)
            # A cancelled or failed job whose processes were still stopping
            # stays live until the agents report them gone.
            stopping = {t.job_id for t in jt.load_tasks(conn, states=list(ACTIVE_TASK))}
            known = {r.id for r in live_rows}
            live_rows += [r for r in (jt.load_job(conn, j) for j in sorted(stopping - known))
                          if r is not None]
            tasks = jt.load_tasks_of(conn, [r.id for r in live_rows])
        self.queues = {r.name: queue_from_row(r.name, r.quota, r.weight, r.min_priority,
                                              r.max_priority) for r in rows}
        by_job: dict[str, list[TaskRow]] = {}
        for t in tasks:
            by_job.setdefault(t.job_id, []).append(t)
        for row in live_rows:
            job = job_from_spec(row.spec, job_id=row.id, submit_time=row.submit_time,
                                owner=row.owner)
            self.live[row.id] = _rebuilt(row, job, by_job.get(row.id, []))
            for t in self.live[row.id].tasks:
                self._task_jobs[t.id] = row.id

    async def release_orphans(self) -> int:
        """Release job allocations no live task holds (a crash between grant
        and task record leaves such); returns how many."""
        held = {t.allocation_id for lj in self.live.values() for t in lj.active()}
        orphans = [a for a in self.ledger.ledger.active().values()
                   if JOB_LABEL in a.labels and a.id not in held]
        for alloc in orphans:
            await self.ledger.release(alloc.id, ReleaseReason.CANCELLED)
        return len(orphans)

    # -- queues -----------------------------------------------------------

    async def put_queue(self, name: str, quota: Mapping[str, Any], weight: float,
                        min_priority: int | None, max_priority: int | None) -> QueueRow:
        queue = queue_from_row(name, quota, weight, min_priority, max_priority)
        if weight <= 0:
            raise InvalidInput("weight: must be greater than 0", field="weight")
        if min_priority is not None and max_priority is not None and min_priority > max_priority:
            raise InvalidInput("min_priority: must not exceed max_priority", field="min_priority")
        now = self.clock()
        old = await self.ledger.read(lambda c: next(
            (r for r in jt.load_queues(c) if r.name == name), None))
        row = QueueRow(name, dict(queue.quota), weight, min_priority, max_priority,
                       old.created_at if old else now, now)

        def write(conn: sa.Connection) -> None:
            jt.upsert_queue(conn, row)
            self.ledger.event(conn, "queue.updated", name, {"weight": weight})

        await self.ledger.committer.submit_alone(write)
        self.queues[name] = queue
        self.kick()
        return row

    # -- jobs -------------------------------------------------------------

    async def submit(self, spec: dict[str, Any], owner: str | None) -> JobRow:
        now = self.clock()
        job_id = new_job_id()
        job = job_from_spec(spec, job_id=job_id, submit_time=now, owner=owner)
        RunPolicy.of(spec)  # InvalidInput (422) for a bad restart policy or signal
        # JobRejected (422) says why not
        validate_job(job, self.queues, self._state(extra=tuple(self.potential_nodes())))
        row = JobRow(job_id, job.name, owner, job.queue, job.priority, JobState.PENDING.value,
                     spec, now, None, None, None, None, 0, 0)

        def write(conn: sa.Connection) -> None:
            jt.insert_job(conn, row)
            self.ledger.event(conn, "job.submitted", job_id, {"queue": job.queue,
                                                              "owner": owner})

        await self.ledger.committer.submit_alone(write)
        self.live[job_id] = LiveJob(row, job)
        self.kick()
        return row

    async def get(self, job_id: str) -> tuple[JobRow, list[TaskRow]]:
        live = self.live.get(job_id)
        row = live.row if live else await self.ledger.read(lambda c: jt.load_job(c, job_id))
        if row is None:
            raise NotFound(f"job {job_id} not found", id=job_id)
        tasks = await self.ledger.read(lambda c: jt.load_tasks(c, job_id=job_id))
        return row, tasks

    async def cancel(self, job_id: str) -> JobRow:
        live = self.live.get(job_id)
        if live is None:
            row, _ = await self.get(job_id)
            return row  # already ended: cancelling again is a no-op
        self._drop_switches(job_id)
        if live.ending:
            return live.row
        running = [t for t in live.active() if self._runs_process(live, t)]
        if not running:
            return await self._end(live, JobState.CANCELLED, ReleaseReason.CANCELLED, "cancelled")
        # Processes run: the job is cancelled now, its resources come back
        # when the agents report the processes gone.
        row = replace(live.row, state=JobState.CANCELLED.value, reason="cancelled")
        await self._write_job(row, "job.state", {"state": row.state, "reason": "cancelled"})
        live.row = row
        await self._request_stop(live, live.active(), "cancelled", "cancelled")
        return row

    async def complete(self, job_id: str, *, succeeded: bool, exit_code: int | None) -> JobRow:
        """End a lease job (one without a command) as its owner says."""
        live = self.live.get(job_id)
        if live is None:
            row, _ = await self.get(job_id)
            return row
        if any(self._runs_process(live, t) for t in live.active()):
            # Its processes decide how it ends; releasing under them would
            # hand their devices to someone else while they still run.
            raise InvalidInput(f"job {job_id} runs a command on an agent; it ends when its "
                               "processes exit (cancel it to stop them)", field="id")
        state = JobState.SUCCEEDED if succeeded else JobState.FAILED
        reason = ReleaseReason.COMPLETED if succeeded else ReleaseReason.FAILED
        return await self._end(live, state, reason, state.value, exit_code)

    def queue_usage(self) -> dict[str, dict[str, int]]:
        """What each queue's running jobs hold, as ``ClusterState.usage`` counts
        it (a unit counts its declared total), without building the state:
        the alerts and metrics ask every few seconds, and building a
        ``ClusterState`` costs a ``Job`` per active allocation, held on the
        event loop (half a second at 30,000 allocations)."""
        usage: dict[str, dict[str, int]] = {name: {} for name in self.queues}
        units: set[str] = set()
        for alloc in self.ledger.ledger.active().values():
            job_id = alloc.labels.get(JOB_LABEL)
            live = self.live.get(job_id) if job_id else None
            if live is None:
                used = usage.get(LEASE_QUEUE)  # plain allocations: never a named queue
                if used is not None:
                    for r, q in alloc.resources.items():
                        used[r] = used.get(r, 0) + q
                continue
            units.add(_unit_id(live, alloc))
        for unit_id in units:
            live = self.live[_job_of(unit_id)]
            unit = live.job if unit_id == live.job.id else _unit(live.job, unit_id)
            used = usage.get(unit.queue)
            if used is not None:
                for r, q in unit.total.items():
                    used[r] = used.get(r, 0) + q
        return usage

    def explain(self, job_id: str) -> Explanation:
        live = self.live.get(job_id)
        if live is None or live.state not in WAITING:
            raise InvalidInput(f"job {job_id} is not waiting; explain answers for pending jobs",
                               field="id")
        return explain(self._state(), live.job, now=self.clock(), queues=self.queues)

    # -- what agents run --------------------------------------------------

    def assignments(self, node: str) -> list[dict[str, Any]]:
        """Every task ``node`` must run or stop now: the agent's desired state."""
        out = []
        for live in self.live.values():
            if live.job.command is None:
                continue
            for task in live.active():
                if task.node == node:
                    out.append(self._assignment(live, task))
        out.sort(key=lambda a: (a["created_at"], a["index"]))
        return out

    def find_task(self, task_id: str) -> tuple[LiveJob, TaskRow] | None:
        live = self.live.get(self._task_jobs.get(task_id, ""))
        if live is None:
            return None
        task = next((t for t in live.tasks if t.id == task_id), None)
        return (live, task) if task is not None else None

    async def task_report(self, node: str, task_id: str, report: TaskReport) -> dict[str, Any]:
        """Apply an agent's report on one task; repeating a report is harmless."""
        found = self.find_task(task_id)
        if found is None or found[1].node != node:
            stored = await self.ledger.read(lambda c: jt.load_task(c, task_id))
            return {"known": stored is not None and stored.node == node, "active": False,
                    "state": stored.state if stored is not None else None}
        live, task = found
        if task.state not in ACTIVE_TASK:
            return {"known": True, "active": False, "state": task.state}
        if report.state == "exited":
            state, why = _outcome(task, report)
            await self._finish_task(live, task, state, why, report.exit_code, report.checkpoint,
                                    report.times, report.usage)
            return {"known": True, "active": False, "state": state, "reason": why}
        else:
            await self._progress(live, task, report)
        found = self.find_task(task_id)
        now_state = found[1].state if found else "ended"
        return {"known": True, "active": now_state in ACTIVE_TASK, "state": now_state}

    async def node_lost(self, node: str) -> int:
        """The node is gone: its tasks end as ``lost`` (allocations released
        with reason ``node_lost``) and are requeued per their restart policy."""
        lost = [(live, t) for live in list(self.live.values()) for t in live.active()
                if t.node == node]
        for live, task in lost:
            await self._finish_task(live, task, "lost", f"node {node} lost", None, None, {})
        return len(lost)

    async def stop_node_tasks(self, node: str, state: str, reason: str) -> int:
        """Ask for every process on ``node`` to stop (a drain past its deadline)."""
        count = 0
        for live in list(self.live.values()):
            tasks = [t for t in live.active() if t.node == node and not t.stop_state]
            if tasks:
                count += len(tasks)
                await self._request_stop(live, tasks, state, reason)
        return count

    def tasks_on(self, node: str) -> list[TaskRow]:
        return [t for live in self.live.values() for t in live.active() if t.node == node]

    # -- the scheduling loop ---------------------------------------------

    def kick(self) -> None:
        """Something changed (a submission, a release, a node): run a cycle soon."""
        self._kick.set()

    async def run_forever(self, idle_s: float = 1.0) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), timeout=idle_s)
            self._kick.clear()
            try:
                await self.run_cycle()
            except Exception as exc:
                log.exception("cycle_failed", error=repr(exc))

    async def run_cycle(self) -> CycleResult:
        # One decision at a time: a switch that starts when its victims have
        # exited must not find a cycle halfway through granting.
        async with self._lock:
            return await self._cycle()

    async def _cycle(self) -> CycleResult:
        now = self.clock()
        pending = [u for lj in self.live.values() if lj.not_before <= now
                   for u in lj.open_units() if u.id not in self.switches]
        if not pending:
            # Nothing waits: building the cluster view would be all the work.
            self.last_cycle = CycleResult((), (), (), {})
            return self.last_cycle
        state = self._state()
        result = schedule_cycle(state, pending, now, self.config, queues=self.queues,
                                history=self.history)
        self.last_cycle = result
        self.cycles += 1
        stopping = set()
        for pre in result.preemptions:
            if await self._preempt(pre):
                stopping.add(pre.victim)
        for placement in result.placements:
            waits = {v for v in placement.preempted if v in stopping}
            if waits:
                await self._hold_switch(placement.job_id, placement.tasks, waits, now)
            else:
                await self._start(placement.job_id, placement.tasks)
        return result

    # -- internals: placing -------------------------------------------------

    def _state(self, extra: Sequence[Node] = ()) -> ClusterState:
        """The cluster as the core sees it: nodes, and every active allocation
        as a running job (plain allocations as jobs no one may preempt).
        A unit whose processes are being stopped is shown ending now and not
        preemptible, so no second victim is chosen for what it frees.
        ``extra``: nodes to add that are not in the ledger (not for placing)."""
        ledger = self.ledger.ledger
        stopping = {t.allocation_id for lj in self.live.values() for t in lj.active()
                    if t.stop_state}
        by_unit: dict[str, list[Allocation]] = {}
        running: list[RunningJob] = []
        for alloc in ledger.active().values():
            job_id = alloc.labels.get(JOB_LABEL)
            live = self.live.get(job_id) if job_id else None
            if live is None:
                running.append(_lease(alloc))
                continue
            by_unit.setdefault(_unit_id(live, alloc), []).append(alloc)
        for unit_id, allocs in by_unit.items():
            live = self.live[_job_of(unit_id)]
            unit = live.job if unit_id == live.job.id else _unit(live.job, unit_id)
            tasks = tuple(TaskPlacement(a.node, a.resources, a.devices) for a in allocs)
            start = live.row.started_at or min(a.created_at for a in allocs)
            estimate = unit.runtime_estimate
            if any(a.id in stopping for a in allocs):
                unit, estimate = replace(unit, preemptible=False), 0.0
            running.append(RunningJob(unit, start, tasks, estimate))
        return ClusterState([*ledger.nodes.values(), *extra], running)

    async def _start(self, unit_id: str, placements: Sequence[TaskPlacement]) -> None:
        live = self.live.get(_job_of(unit_id))
        if live is None or live.ending:
            return
        first = 0 if unit_id == live.job.id else int(unit_id.rsplit("#", 1)[1])
        owner = live.row.owner
        grants: list[tuple[int, TaskPlacement]] = []
        index = first
        for tp in placements:
            for _ in range(tp.count):
                grants.append((index, tp))
                index += 1
        results = await asyncio.gather(*(
            self.ledger.grant(dict(tp.resources), node=tp.node, owner=owner,
                              labels={JOB_LABEL: live.job.id, TASK_LABEL: str(i)},
                              devices=dict(tp.devices) or None)
            for i, tp in grants
        ), return_exceptions=True)
        allocs = [r for r in results if isinstance(r, Allocation)]
        if len(allocs) != len(grants):
            # All or nothing: a gang never holds part of its resources.
            for alloc in allocs:
                await self.ledger.release(alloc.id, ReleaseReason.CANCELLED)
            errors = [r for r in results if isinstance(r, BaseException)]
            log.warning("placement_failed", job=live.job.id, error=repr(errors[0]))
            self.kick()
            return
        await self._record_start(live, [(i, a) for (i, _), a in zip(grants, allocs, strict=True)])

    async def _record_start(self, live: LiveJob, started: list[tuple[int, Allocation]]) -> None:
        now = self.clock()
        lease = live.job.command is None
        task_state = "running" if lease else "scheduled"
        attempt = live.row.attempts + 1
        rows = [TaskRow(uuid.uuid4().hex, live.job.id, i, attempt, a.node, a.id, task_state,
                        None, None, now, now if lease else None, None) for i, a in started]
        job_state = JobState.RUNNING if lease or live.state is JobState.RUNNING \
            else JobState.SCHEDULED
        row = replace(live.row, state=job_state.value, started_at=live.row.started_at or now,
                      attempts=attempt, reason=None)

        def write(conn: sa.Connection) -> None:
            jt.insert_tasks(conn, rows)
            jt.update_job(conn, row.id, state=row.state, started_at=row.started_at,
                          attempts=row.attempts, reason=None)
            self.ledger.event(conn, "job.placed", row.id, {
                "state": row.state, "tasks": [{"index": t.index, "node": t.node,
                                               "allocation": t.allocation_id, "task": t.id}
                                              for t in rows]})

        await self.ledger.committer.submit_alone(write)
        live.row = row
        live.tasks.extend(rows)
        for t in rows:
            self._task_jobs[t.id] = live.job.id
        if not lease:
            self.on_nodes_changed({t.node for t in rows})

    async def _hold_switch(self, unit_id: str, tasks: tuple[TaskPlacement, ...],
                           victims: set[str], now: float) -> None:
        self.switches[unit_id] = Switch(unit_id, tasks, set(victims), now)
        live = self.live.get(_job_of(unit_id))
        if live is not None:
            await self._write_job(live.row, "job.preempting", {
                "unit": unit_id, "victims": sorted(victims), "decided_at": now})

    async def _preempt(self, pre: Preemption) -> bool:
        """Preempt a victim unit; True when its processes must exit first."""
        victim = self.live.get(_job_of(pre.victim))
        if victim is None:
            return False
        tasks = [t for t in victim.active() if victim.unit_of(t) == pre.victim]
        running = [t for t in tasks if self._runs_process(victim, t)]
        if not running:
            await self._end(victim, JobState.PREEMPTED, ReleaseReason.PREEMPTED,
                            f"preempted by {pre.by}")
            return False
        await self._request_stop(victim, tasks, "preempted", f"preempted by {pre.by}")
        return True

    def _drop_switches(self, job_id: str) -> None:
        for unit_id in [u for u in self.switches if _job_of(u) == job_id]:
            del self.switches[unit_id]

    def _switches_freed(self, unit_id: str) -> list[Switch]:
        """A unit's last process is ending: the switches that waited only on it."""
        freed = []
        for switch in list(self.switches.values()):
            switch.victims.discard(unit_id)
            if not switch.victims:
                del self.switches[switch.unit_id]
                freed.append(switch)
        return freed

    # -- internals: running and ending ---------------------------------------

    def _runs_process(self, live: LiveJob, task: TaskRow) -> bool:
        return live.job.command is not None and self.has_agent(task.node)

    async def _progress(self, live: LiveJob, task: TaskRow, report: TaskReport) -> None:
        if _PROGRESS.get(report.state, -1) <= _PROGRESS[task.state]:
            return
        now = self.clock()
        started = report.times.get("started_at", now) if report.state == "running" else None
        new = replace(task, state=report.state, started_at=started or task.started_at)
        row = live.row
        if report.state == "running" and row.state == JobState.SCHEDULED.value:
            row = replace(row, state=JobState.RUNNING.value)

        def write(conn: sa.Connection) -> None:
            jt.update_task(conn, task.id, only_from=ACTIVE_TASK, state=new.state,
                           started_at=new.started_at)
            if row is not live.row:
                jt.update_job(conn, row.id, state=row.state)
            self.ledger.event(conn, "task.state", task.id, {
                "job": task.job_id, "index": task.index, "state": new.state,
                "node": task.node, "times": dict(report.times)})

        await self.ledger.committer.submit_alone(write)
        live.tasks = [new if t.id == task.id else t for t in live.tasks]
        live.row = row

    async def _request_stop(self, live: LiveJob, tasks: list[TaskRow], state: str,
                            reason: str) -> None:
        """Ask agents to stop these tasks' processes (their allocations are
        released when the exits are reported); tasks without a process end now."""
        asked = [replace(t, stop_state=state, stop_reason=reason) for t in tasks
                 if t.state in ACTIVE_TASK and t.stop_state != state]
        direct = [t for t in asked if not self._runs_process(live, t)]
        remote = [t for t in asked if self._runs_process(live, t)]
        if remote:
            by_id = {t.id: t for t in remote}
            live.tasks = [by_id.get(t.id, t) for t in live.tasks]
            # The agents hear first; the record follows. A server that dies in
            # between has the agent's exit report, which carries the outcome.
            self.on_nodes_changed({t.node for t in remote})

            def write(conn: sa.Connection) -> None:
                for t in remote:
                    jt.update_task(conn, t.id, only_from=ACTIVE_TASK, stop_state=state,
                                   stop_reason=reason)
                    self.ledger.event(conn, "task.stop", t.id, {
                        "job": t.job_id, "index": t.index, "state": state, "reason": reason,
                        "node": t.node})

            await self.ledger.committer.submit_alone(write)
        for t in direct:
            # Not awaited here: the caller may hold the lock _finish_task takes.
            ended = asyncio.get_running_loop().create_task(
                self._finish_task(live, t, state, reason, None, None, {}))
            self._background.add(ended)
            ended.add_done_callback(self._background.discard)

    async def _finish_task(self, live: LiveJob, task: TaskRow, state: str, why: str,
                           exit_code: int | None, checkpoint: str | None,
                           times: Mapping[str, float],
                           used: Mapping[str, float] | None = None) -> None:
        """End one task exactly once: release its allocation, record it, and
        decide what its job does next (finish, retry, wait to be placed)."""
        if task.id in self._finishing:
            return
        self._finishing.add(task.id)
        try:
            async with self._lock:
                current = next((t for t in live.tasks if t.id == task.id), None)
                if current is None or current.state not in ACTIVE_TASK:
                    return
                await self._finish_locked(live, current, state, why, exit_code, checkpoint,
                                          times, used)
        finally:
            self._finishing.discard(task.id)

    async def _finish_locked(self, live: LiveJob, task: TaskRow, state: str, why: str,
                             exit_code: int | None, checkpoint: str | None,
                             times: Mapping[str, float],
                             used: Mapping[str, float] | None = None) -> None:
        now = self.clock()
        ended = replace(task, state=state, exit_code=exit_code, reason=why[:512], ended_at=now,
                        checkpoint=checkpoint or task.checkpoint)
        change = self._job_after(live, ended, now)
        unit = live.unit_of(ended)
        last = not any(live.unit_of(t) == unit for t in live.active() if t.id != task.id)
        freed = self._switches_freed(unit) if last else []
        # A preempting job waiting on this task starts in the same breath:
        # its grant joins the release in one batch (one commit), before any
        # cycle could give what is freed to someone else.
        results = await asyncio.gather(self._release(task, state),
                                       *(self._start(sw.unit_id, sw.tasks) for sw in freed),
                                       return_exceptions=True)
        for error in (r for r in results if isinstance(r, BaseException)):
            log.warning("switch_start_failed", task=task.id, error=repr(error))
        await self._write_end(ended, change, times, usage_row(live, ended, times, used))
        self._apply_end(live, ended, change)
        if change.stop:
            await self._request_stop(live, change.stop, change.stop_state, change.stop_reason)
        self.kick()

    async def _release(self, task: TaskRow, state: str) -> None:
        try:
            await self.ledger.release(task.allocation_id, RELEASE_FOR[state])
        except ApportionError as exc:
            log.warning("release_failed", task=task.id, error=exc.message)

    def _job_after(self, live: LiveJob, ended: TaskRow, now: float) -> _JobChange:
        """The job's next state once ``ended`` has ended."""
        others = [t for t in live.active() if t.id != ended.id]
        row = live.row
        if live.ending:
            return _JobChange(replace(row, ended_at=None if others else now), not others)
        if ended.state == "succeeded":
            done = {t.index for t in live.tasks if t.state == "succeeded"} | {ended.index}
            if len(done) >= live.job.task_count:
                return _JobChange(replace(row, state=JobState.SUCCEEDED.value, exit_code=0,
                                          reason="succeeded", ended_at=now), True)
            return _JobChange(replace(row, state=_waiting_or(row, others, JobState.PENDING)),
                              False)
        if ended.state == "preempted":
            unit_left = any(live.unit_of(t) == live.unit_of(ended) for t in others)
            return _JobChange(replace(
                row, state=_waiting_or(row, others, JobState.PREEMPTED), reason=ended.reason,
                preemptions=row.preemptions + (0 if unit_left else 1)), False)
        if ended.state == "cancelled":
            return _JobChange(replace(row, state=_waiting_or(row, others, JobState.PENDING)),
                              False)
        return self._after_failure(live, ended, others, now)

    def _after_failure(self, live: LiveJob, ended: TaskRow, others: list[TaskRow],
                       now: float) -> _JobChange:
        row = live.row
        policy = live.policy
        failures = live.failures + 1
        why = ended.reason or ended.state
        if policy.restart == "on-failure" and failures <= policy.max_retries:
            live.not_before = now + policy.backoff(failures)
            # A gang runs together or not at all: its other members stop too.
            siblings = others if live.job.gang else []
            rest = [t for t in others if t not in siblings]
            return _JobChange(
                replace(row, state=_waiting_or(row, rest, JobState.PENDING),
                        reason=f"retry {failures} of {policy.max_retries} after {why}"[:512]),
                False, siblings, "cancelled", "a gang member failed")
        finished = not others
        return _JobChange(
            replace(row, state=JobState.FAILED.value, reason=why[:512],
                    exit_code=ended.exit_code, ended_at=now if finished else None),
            finished, others, "cancelled", f"job failed: {why}"[:512])

    async def _write_end(self, ended: TaskRow, change: _JobChange,
                         times: Mapping[str, float], usage: UsageRow | None = None) -> None:
        row = change.row

        def write(conn: sa.Connection) -> None:
            if usage is not None:
                insert_usage(conn, usage)
            jt.update_task(conn, ended.id, only_from=ACTIVE_TASK, state=ended.state,
                           exit_code=ended.exit_code, reason=ended.reason,
                           ended_at=ended.ended_at, checkpoint=ended.checkpoint)
            jt.update_job(conn, row.id, state=row.state, reason=row.reason,
                          exit_code=row.exit_code, ended_at=row.ended_at,
                          preemptions=row.preemptions)
            self.ledger.event(conn, "task.state", ended.id, {
                "job": ended.job_id, "index": ended.index, "state": ended.state,
                "exit_code": ended.exit_code, "reason": ended.reason, "node": ended.node,
                "allocation": ended.allocation_id, "checkpoint": ended.checkpoint,
                "times": dict(times)})
            if change.finished or row.state != ended.state:
                self.ledger.event(conn, "job.state", row.id, {"state": row.state,
                                                              "reason": row.reason})

        await self.ledger.committer.submit_alone(write)

    def _apply_end(self, live: LiveJob, ended: TaskRow, change: _JobChange) -> None:
        if ended.state in ("failed", "lost"):
            live.failures += 1
        if ended.checkpoint:
            live.checkpoints[ended.index] = ended.id
        # Succeeded tasks stay: a bag must not run them again.
        kept = [t for t in live.tasks if t.id != ended.id]
        if ended.state == "succeeded":
            kept.append(ended)
        else:
            self._task_jobs.pop(ended.id, None)
        live.tasks = kept
        live.row = change.row
        if change.finished:
            self._forget(live)
            if change.row.state == JobState.SUCCEEDED.value and live.row.started_at:
                self.history.record(live.job, self.clock() - live.row.started_at)

    def _forget(self, live: LiveJob) -> None:
        self.live.pop(live.job.id, None)
        self._drop_switches(live.job.id)
        for t in live.tasks:
            self._task_jobs.pop(t.id, None)

    async def _write_job(self, row: JobRow, kind: str, data: dict[str, Any]) -> None:
        def write(conn: sa.Connection) -> None:
            jt.update_job(conn, row.id, state=row.state, reason=row.reason)
            self.ledger.event(conn, kind, row.id, data)

        await self.ledger.committer.submit_alone(write)

    def _assignment(self, live: LiveJob, task: TaskRow) -> dict[str, Any]:
        alloc = self.ledger.ledger.active().get(task.allocation_id)
        devices = {r: list(ids) for r, ids in alloc.devices.items()} if alloc else {}
        resources = dict(alloc.resources) if alloc else {}
        policy = live.policy
        resume = live.checkpoints.get(task.index)
        return {
            "id": task.id, "job_id": task.job_id, "index": task.index, "attempt": task.attempt,
            "allocation_id": task.allocation_id, "state": task.state,
            "created_at": task.created_at, "command": list(live.job.command or ()),
            "resources": format_vector(resources), "resources_base": resources,
            "devices": devices, "device_info": self._device_info(task.node, devices),
            "stop_signal": policy.stop_signal, "stop_grace_s": policy.stop_grace_s,
            "stop": {"state": task.stop_state, "reason": task.stop_reason}
            if task.stop_state else None,
            "resume": {"task_id": resume} if resume else None,
        }

    def _device_info(self, node: str, devices: Mapping[str, list[str]]) -> dict[str, Any]:
        try:
            known = self.ledger.ledger.node(node).devices
        except ApportionError:
            return {}
        out: dict[str, Any] = {}
        for resource, ids in devices.items():
            by_id = {d.id: d for d in known.get(resource, ())}
            out[resource] = [{"id": i, "uuid": by_id[i].uuid if i in by_id else None,
                              "model": by_id[i].model if i in by_id else None,
                              "memory": by_id[i].memory if i in by_id else None}
                             for i in ids]
        return out

    async def _end(self, live: LiveJob, state: JobState, reason: ReleaseReason, why: str,
                   exit_code: int | None = None) -> JobRow:
        """End every active task of a job, release its allocations once, and
        record the job's new state (preempted jobs wait again). For tasks no
        agent runs a process of: leases, and nodes without an agent."""
        now = self.clock()
        ended = live.active()
        for task in ended:
            try:
                await self.ledger.release(task.allocation_id, reason)
            except ApportionError as exc:
                log.warning("release_failed", task=task.id, error=exc.message)
        task_state = state.value
        row = replace(live.row, state=state.value, reason=why, exit_code=exit_code,
                      ended_at=None if state is JobState.PREEMPTED else now,
                      preemptions=live.row.preemptions + (state is JobState.PREEMPTED))

        def write(conn: sa.Connection) -> None:
            for task in ended:
                jt.update_task(conn, task.id, only_from=ACTIVE_TASK, state=task_state,
                               ended_at=now, reason=why)
            jt.update_job(conn, row.id, state=row.state, reason=why, exit_code=exit_code,
                          ended_at=row.ended_at, preemptions=row.preemptions)
            self.ledger.event(conn, "job.state", row.id, {"state": row.state, "reason": why})

        await self.ledger.committer.submit_alone(write)
        if state is JobState.PREEMPTED:
            live.row = row
            live.tasks = [t for t in live.tasks if t not in ended]
        else:
            self._forget(live)
            if live.row.started_at is not None and state is JobState.SUCCEEDED:
                self.history.record(live.job, now - live.row.started_at)
        for task in ended:
            self._task_jobs.pop(task.id, None)
        self.kick()
        return row


def _rebuilt(row: JobRow, job: Job, tasks: list[TaskRow]) -> LiveJob:
    """A live job from its stored rows: failures counted, checkpoints found."""
    live = LiveJob(row, job, [t for t in tasks if t.state in (*ACTIVE_TASK, "succeeded")])
    live.failures = sum(1 for t in tasks if t.state in ("failed", "lost"))
    for t in tasks:
        if t.checkpoint:
            live.checkpoints[t.index] = t.id
    return live


def _outcome(task: TaskRow, report: TaskReport) -> tuple[str, str]:
    """The end state an exit report means for ``task``."""
    if report.memory_exceeded:
        return "failed", report.reason or "memory limit exceeded"
    if report.signalled and task.stop_state:
        return task.stop_state, task.stop_reason or task.stop_state
    if report.lost:
        return "lost", report.reason or "stopped by its agent, cut off from the server"
    if report.exit_code == 0:
        return "succeeded", "exit code 0"
    if report.exit_code is None:
        return "failed", report.reason or "the process could not be started"
    return "failed", report.reason or f"exit code {report.exit_code}"


def _waiting_or(row: JobRow, others: list[TaskRow], waiting: JobState) -> str:
    """Unchanged while other tasks run, else waiting to be placed again."""
    return row.state if others else waiting.value


def _job_of(unit_id: str) -> str:
    return unit_id.split("#", 1)[0]


def _unit_id(live: LiveJob, alloc: Allocation) -> str:
    if len(live.job.units()) == 1:
        return live.job.id
    return f"{live.job.id}#{alloc.labels.get(TASK_LABEL, '0')}"


def _unit(job: Job, unit_id: str) -> Job:
    index = int(unit_id.rsplit("#", 1)[1])
    return job.units()[index]


def _lease(alloc: Allocation) -> RunningJob:
    job = Job(f"allocation:{alloc.id}", (TaskSpec(dict(alloc.resources)),),
              queue=LEASE_QUEUE, submit_time=alloc.created_at, user=alloc.owner)
    return RunningJob(job, alloc.created_at,
                      (TaskPlacement(alloc.node, alloc.resources, alloc.devices),))


def usage_row(live: LiveJob, ended: TaskRow, times: Mapping[str, float],
              used: Mapping[str, float] | None) -> UsageRow | None:
    """The usage record of a task that ran a process and has ended: what it
    asked for (its task's resources, and the job's run time estimate) and
    what the agent measured. None when no process ran or nothing was measured."""
    if not used or "started_at" not in times:
        return None
    job = live.job
    index = ended.index
    requested: dict[str, int] = {}
    for spec in job.tasks:
        if index < spec.count:
            requested = dict(spec.resources)
            break
        index -= spec.count
    predicted = (live.row.spec.get("prediction") or {}).get("filled") or {}
    if job.runtime_estimate is not None and "runtime_estimate" not in predicted:
        requested["runtime_s"] = math.ceil(job.runtime_estimate)  # the user's own estimate
    command = shlex.join(job.command) if job.command else None
    name = job.name or (os.path.basename(job.command[0]) if job.command else job.id)
    return UsageRow(ended.id, ended.job_id, name, live.row.owner or "", live.row.queue, command,
                    ended.state, requested,
                    {k: math.ceil(v) for k, v in used.items() if math.isfinite(v)},
                    times.get("started_at"), float(ended.ended_at or times.get("exited_at", 0)))
