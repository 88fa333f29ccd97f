"""Every change of a job's state, as one transaction with its ledger change.

Each function here runs inside a unit of work (``LedgerService.commit_unit``):
it locks the job's row, reads what it decides on as stored now, decides with
``model.py``, and writes tasks, job, allocations and events together. Any
server may run them, for any job: two servers changing one job queue on its
row lock, and each decides on what the other committed.

A job row carries counters of its active, succeeded and failed tasks, kept
in the same transactions, so a task's end reads the task and its job row
only: the cost of a change does not grow with the size of the job.

Placements, preemptions and lost nodes are the leader's decisions: they
carry its epoch and fence on it (``Tx.fence``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import sqlalchemy as sa

from apportion.core.model import Allocation, ReleaseReason
from apportion.core.records import JobRow, TaskRow
from apportion.core.scheduling import Job, JobState
from apportion.exceptions import InvalidInput, NotFound, Refused
from apportion.service.jobs.later import LaterJobRows
from apportion.service.jobs.model import (
    ACTIVE_TASK,
    PROGRESS,
    RELEASE_FOR,
    TaskReport,
    after_end,
    is_ending,
    is_live,
    outcome,
    unit_job_id,
    usage_row,
)
from apportion.service.unit_of_work import Tx
from apportion.store import agent_sessions as sessions
from apportion.store import jobs_tables as jt
from apportion.store.schema import allocations, tasks

CHUNK = 500
"""Tasks one transition ends or stops at most: a 10,000-task job is cancelled
in twenty short transactions, not one that holds the store for seconds."""


@dataclass
class Outcome:
    """What a transition changed, for this server's caches: job rows and
    task rows as now stored, the nodes whose agents must hear of it, the
    tasks that ended, and what the caller answers."""

    rows: dict[str, JobRow] = field(default_factory=dict)
    tasks: list[TaskRow] = field(default_factory=list)
    nodes: set[str] = field(default_factory=set)
    ended: list[tuple[JobRow, TaskRow]] = field(default_factory=list)
    """Tasks that ended here, with their job row after the end."""
    reported: set[str] = field(default_factory=set)
    """Tasks whose end their own agent reported: their node knows, and its
    long-poll is not woken for them (a wake is a poll and an answer, twice
    per preemption)."""
    answer: dict[str, Any] = field(default_factory=dict)
    built: dict[str, Job] = field(default_factory=dict)
    """Core values of new jobs, built from their specs already."""


class Change:
    """One transition's transaction: its ``Tx``, the core value of each job
    it touches, and the ``Outcome`` it builds."""

    def __init__(self, tx: Tx, jobs: Callable[[JobRow], Job]) -> None:
        self.tx = tx
        self._conn = tx.conn
        self.now = tx.now
        self.out = Outcome()
        self._jobs = jobs
        self._agents: dict[str, bool] = {}
        self._dirty: dict[str, JobRow] = {}
        self._later = tx.later(LaterJobRows)

    @property
    def conn(self) -> sa.Connection:
        """The transaction's connection, with every grant and row that this
        batch's units left for later written out (``later.py``): what a
        statement on it reads is what the batch has changed."""
        return self.tx.settle() if self._later is not None else self._conn

    def job(self, row: JobRow) -> Job:
        return self._jobs(row)

    def load(self, job_id: str) -> JobRow | None:
        """The job row as stored (or as this transaction changed it), locked
        until the transaction ends."""
        if job_id in self._dirty:
            return self._dirty[job_id]
        left = self._later.job(job_id) if self._later is not None else None
        if left is not None:
            return left
        return jt.load_job(self._conn, job_id, lock=True)

    def loaded(self, row: JobRow | None) -> JobRow | None:
        """A job row read as stored, or as this transaction changed it."""
        if row is None:
            return None
        if row.id in self._dirty:
            return self._dirty[row.id]
        left = self._later.job(row.id) if self._later is not None else None
        return row if left is None else left

    def write(self, row: JobRow) -> JobRow:
        """Change a job row; written once per job at ``flush``, however many
        of its tasks this transaction ends."""
        self._dirty[row.id] = row
        self.out.rows[row.id] = row
        return row

    def flush(self) -> Outcome:
        for row in self._dirty.values():
            if self._later is not None:
                self._later.put_job(row)
            else:
                jt.update_job(self._conn, row.id,
                              **{k: getattr(row, k) for k in jt.JOB_PROGRESS})
        self._dirty.clear()
        return self.out

    def insert_job(self, row: JobRow) -> None:
        if self._later is not None:
            self._later.add_job(row)
        else:
            jt.insert_job(self._conn, row)

    def insert_tasks(self, rows: list[TaskRow]) -> None:
        if self._later is not None:
            self._later.add_tasks(rows)
        else:
            jt.insert_tasks(self._conn, rows)

    def end_read_task(self, ended: TaskRow) -> bool:
        """Record the end of a task that this change read active and has
        not changed since; False when it was no longer active."""
        if self._later is not None:
            self._later.end_task(ended)  # checked when written out
            return True
        return self.end_stored_task(ended)

    def end_stored_task(self, ended: TaskRow) -> bool:
        """Record a task's end if it is still active as stored."""
        return jt.update_task(self.conn, ended.id, only_from=ACTIVE_TASK, state=ended.state,
                              exit_code=ended.exit_code, reason=ended.reason,
                              ended_at=ended.ended_at, checkpoint=ended.checkpoint)

    def left_task(self, task_id: str) -> bool:
        """Whether a unit of this batch left the task's row for later."""
        return self._later is not None and self._later.has_task(task_id)

    def state_event(self, row: JobRow) -> None:
        self.tx.event("job.state", row.id, {"state": row.state, "reason": row.reason})

    def runs_process(self, job: Job, task: TaskRow) -> bool:
        """An agent runs this task's process: its end comes from the agent."""
        if job.command is None:
            return False
        if task.node not in self._agents:
            self._agents[task.node] = sessions.has_agent(self.conn, task.node)
        return self._agents[task.node]

    def active_tasks(self, job_id: str, *, node: str | None = None,
                     not_asked: str | None = None, limit: int | None = None) -> list[TaskRow]:
        """The job's active tasks (on ``node``; not yet asked to reach
        ``not_asked``; the first ``limit``)."""
        if node is None and not_asked is None and limit is None:
            return jt.load_tasks_in(self.conn, job_id, ACTIVE_TASK)
        query = sa.select(tasks).where(tasks.c.job_id == job_id,
                                       tasks.c.state.in_(ACTIVE_TASK))
        if node is not None:
            query = query.where(tasks.c.node == node)
        if not_asked is not None:
            query = query.where(sa.or_(tasks.c.stop_state.is_(None),
                                       tasks.c.stop_state != not_asked))
        query = query.order_by(tasks.c.created_at, tasks.c.index)
        if limit is not None:
            query = query.limit(limit)
        return [TaskRow(**dict(r._mapping)) for r in self.conn.execute(query)]


# -- submission ----------------------------------------------------------------------


def submit(c: Change, row: JobRow, job: Job) -> Outcome:
    """A new job (``job``: its core value, built from its spec already)."""
    c.insert_job(row)
    c.tx.event("job.submitted", row.id, {"queue": row.queue, "owner": row.owner})
    c.out.rows[row.id] = row
    c.out.built[row.id] = job
    return c.out


# -- placing (the leader) ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UnitStart:
    """One unit of a job to start on grants already taken."""

    unit_id: str
    allocs: tuple[tuple[int, Allocation], ...]


def start(c: Change, *, job_id: str, units: Sequence[UnitStart], epoch: int | None) -> Outcome:
    """Record units' tasks on the grants ``commit_unit`` has just written:
    refused unless the job still waits for exactly these tasks."""
    c.tx.fence(epoch)
    row = c.load(job_id)
    if row is None or is_ending(row) or not is_live(row):
        raise Refused(f"job {job_id} is no longer waiting", id=job_id)
    wanted = [i for u in units for i, _ in u.allocs]
    # The row's counters are kept with every task's start and end: with none
    # active and none succeeded, no task of the job is (the common first
    # start asks the store nothing more).
    if (row.tasks_active or row.tasks_succeeded) and _placed(c.conn, job_id, wanted):
        raise Refused(f"job {job_id}: some of these tasks were placed already", id=job_id)
    job = c.job(row)
    lease = job.command is None
    attempt = row.attempts + 1
    rows = [TaskRow(uuid.uuid4().hex, job_id, i, attempt, a.node, a.id,
                    "running" if lease else "scheduled", None, None, c.now,
                    c.now if lease else None, None, epoch=epoch)
            for u in units for i, a in u.allocs]
    state = JobState.RUNNING if lease or row.state == JobState.RUNNING.value \
        else JobState.SCHEDULED
    c.insert_tasks(rows)
    c.write(replace(row, state=state.value, started_at=row.started_at or c.now,
                    attempts=attempt, reason=None, not_before=None,
                    tasks_active=row.tasks_active + len(rows)))
    c.tx.event("job.placed", job_id, {
        "state": state.value, "epoch": epoch,
        "tasks": [{"index": t.index, "node": t.node, "allocation": t.allocation_id,
                   "task": t.id} for t in rows]})
    c.out.tasks.extend(rows)
    if not lease:
        c.out.nodes.update(t.node for t in rows)
    return c.out


def _placed(conn: sa.Connection, job_id: str, indexes: list[int]) -> bool:
    """Whether any of these task indexes runs or has succeeded already."""
    return any(jt.any_task_in(conn, job_id, indexes[begin:begin + 500],
                              (*ACTIVE_TASK, "succeeded"))
               for begin in range(0, len(indexes), 500))


def preempt(c: Change, *, victims: Sequence[str], by: str, epoch: int | None,
            switch: bool = False) -> Outcome:
    """Stop the victim units that unit ``by`` displaces (ended at once where
    no process runs). ``answer["waiting"]`` lists the victims whose processes
    must exit first; with ``switch`` (``by`` is placed once they have) and
    any waiting, the switch is recorded (``job.preempting``) in the same
    transaction: one commit for the decision, not two, on the path of a
    device switch."""
    c.tx.fence(epoch)
    waiting: list[str] = []
    for victim in victims:
        job_id, _, index = victim.partition("#")
        row = c.load(job_id)
        if row is None:
            continue
        active = c.active_tasks(job_id)
        seen = len(c.out.tasks)
        stop_tasks(c, row, [t for t in active if not index or t.index == int(index)],
                   "preempted", f"preempted by {by}")
        if any(task.stop_state and task.state in ACTIVE_TASK for task in c.out.tasks[seen:]):
            waiting.append(victim)
    if switch and waiting:
        c.tx.event("job.preempting", unit_job_id(by), {
            "unit": by, "victims": sorted(waiting), "decided_at": c.now})
    c.out.answer["waiting"] = waiting
    return c.out


# -- stopping and ending ---------------------------------------------------------------


def stop_tasks(c: Change, row: JobRow, stop: Iterable[TaskRow], state: str,
               reason: str) -> JobRow:
    """Ask agents to stop these tasks' processes (their allocations are
    released when the exits are reported); tasks without a process end now.
    Returns the job row after any of those ends."""
    job = c.job(row)
    for task in stop:
        if task.state not in ACTIVE_TASK:
            continue
        if not c.runs_process(job, task):
            row = end_task(c, row, task, state, reason)
            continue
        if task.stop_state == state or not jt.update_task(
                c.conn, task.id, only_from=ACTIVE_TASK, stop_state=state, stop_reason=reason):
            continue  # asked already, or ended earlier in this transaction
        c.tx.event("task.stop", task.id, {"job": task.job_id, "index": task.index,
                                          "state": state, "reason": reason,
                                          "node": task.node})
        c.out.tasks.append(replace(task, stop_state=state, stop_reason=reason))
        c.out.nodes.add(task.node)
    return row


def end_task(c: Change, row: JobRow, task: TaskRow, state: str, why: str, *,
             exit_code: int | None = None, checkpoint: str | None = None,
             times: Mapping[str, float] | None = None,
             used: Mapping[str, float] | None = None, reported: bool = False) -> JobRow:
    """End one active task: release its allocation, record it, and decide
    what its job does next (finish, retry, wait to be placed again).
    ``reported``: the task's own agent reported the end (its node needs no
    word of it), and ``task`` is as this change read it, unchanged since.
    ``row`` is the job as stored now; returns it after the end (unchanged
    when the task had ended already, earlier in this transaction)."""
    times = times or {}
    job = c.job(row)
    ended = replace(task, state=state, exit_code=exit_code, reason=why[:512], ended_at=c.now,
                    checkpoint=checkpoint or task.checkpoint)
    if not (c.end_read_task(ended) if reported else c.end_stored_task(ended)):
        return row

    def others() -> list[TaskRow]:
        return [t for t in c.active_tasks(row.id) if t.id != task.id]

    change = after_end(job, row, ended, c.now, others)
    c.tx.release(task.allocation_id, RELEASE_FOR[state])
    usage = usage_row(row, job, ended, times, used)
    if usage is not None:
        c.tx.usage(usage)
    new = c.write(change.row)
    c.tx.event("task.state", ended.id, {
        "job": ended.job_id, "index": ended.index, "state": ended.state,
        "exit_code": ended.exit_code, "reason": ended.reason, "node": ended.node,
        "allocation": ended.allocation_id, "checkpoint": ended.checkpoint,
        "times": dict(times)})
    if change.finished or new.state != ended.state:
        c.state_event(new)
    c.out.tasks.append(ended)
    c.out.ended.append((new, ended))
    if reported:
        c.out.reported.add(ended.id)
    else:
        c.out.nodes.add(task.node)
    if change.stop:
        new = stop_tasks(c, new, change.stop, change.stop_state, change.stop_reason)
    return new


# -- what users ask -----------------------------------------------------------------------


def cancel(c: Change, job_id: str, *, limit: int = CHUNK) -> Outcome:
    """Cancel a job: ended now where nothing runs, else once its processes
    have exited; cancelling an ended job changes nothing. Stops at most
    ``limit`` tasks; ``answer["more"]`` says to call again for the rest."""
    row = c.load(job_id)
    if row is None:
        raise NotFound(f"job {job_id} not found", id=job_id)
    if not is_live(row):
        c.out.rows[job_id] = row
        return c.out
    if not is_ending(row):
        row = c.write(replace(row, state=JobState.CANCELLED.value, reason="cancelled",
                              ended_at=None if row.tasks_active else c.now))
        c.state_event(row)
    elif row.state != JobState.CANCELLED.value:
        c.out.rows[job_id] = row  # failed already: its last processes are stopping
        return c.out
    # Cancelled again while its processes stop: the answer is the job as it is.
    c.out.rows.setdefault(job_id, row)
    _stop_chunk(c, row, "cancelled", "cancelled", limit)
    return c.out


def _stop_chunk(c: Change, row: JobRow, state: str, reason: str, limit: int) -> None:
    batch = c.active_tasks(row.id, not_asked=state, limit=limit + 1)
    stop_tasks(c, row, batch[:limit], state, reason)
    c.out.answer["more"] = len(batch) > limit


def complete(c: Change, job_id: str, *, succeeded: bool, exit_code: int | None,
             limit: int = CHUNK) -> Outcome:
    """End a lease job (one without a command) as its owner says. Ends at
    most ``limit`` tasks; ``answer["more"]`` says to call again for the rest."""
    row = c.load(job_id)
    if row is None:
        raise NotFound(f"job {job_id} not found", id=job_id)
    state = JobState.SUCCEEDED if succeeded else JobState.FAILED
    if not is_live(row) or (is_ending(row) and row.reason != "completed"):
        c.out.rows[job_id] = row
        return c.out
    batch = c.active_tasks(job_id, limit=limit + 1)
    job = c.job(row)
    if any(c.runs_process(job, t) for t in batch):
        # Its processes decide how it ends; releasing under them would hand
        # their devices to someone else while they still run.
        raise InvalidInput(f"job {job_id} runs a command on an agent; it ends when its "
                           "processes exit (cancel it to stop them)", field="id")
    if not is_ending(row):
        # Ending first: a cycle between two chunks must not place the rest again.
        row = c.write(replace(row, state=state.value, reason="completed", exit_code=exit_code))
    reason = ReleaseReason.COMPLETED if row.state == JobState.SUCCEEDED.value \
        else ReleaseReason.FAILED
    done = 0
    for task in batch[:limit]:
        if not jt.update_task(c.conn, task.id, only_from=ACTIVE_TASK, state=row.state,
                              ended_at=c.now, reason=row.state):
            continue
        c.tx.release(task.allocation_id, reason)
        ended = replace(task, state=row.state, ended_at=c.now, reason=row.state)
        c.out.tasks.append(ended)
        done += 1
    left = row.tasks_active - done
    row = c.write(replace(
        row, tasks_active=left, ended_at=None if left else c.now,
        reason=row.state if not left else row.reason,
        tasks_succeeded=row.tasks_succeeded + (done if row.state == "succeeded" else 0)))
    c.out.ended.extend((row, t) for t in c.out.tasks)
    if not left:
        c.state_event(row)
    c.out.answer["more"] = len(batch) > limit
    return c.out


# -- what agents report -------------------------------------------------------------------


def report(c: Change, *, node: str, task_id: str, report: TaskReport) -> Outcome:
    """Apply an agent's report on one of its tasks; repeating one is harmless.
    ``report.checkpoint`` names a checkpoint already stored, or is None."""
    task, row = _report_rows(c, task_id, node, exited=report.state == "exited")
    if task is None or task.node != node:
        c.out.answer = {"known": False, "active": False,
                        "state": None if task is None else task.state}
        return c.out
    if row is None or task is None or task.state not in ACTIVE_TASK:
        c.out.answer = {"known": True, "active": False,
                        "state": task.state if task else None}
        return c.out
    if report.state == "exited":
        state, why = outcome(task, report)
        end_task(c, row, task, state, why, exit_code=report.exit_code,
                 checkpoint=report.checkpoint, times=report.times, used=report.usage,
                 reported=True)
        c.out.answer = {"known": True, "active": False, "state": state, "reason": why}
        return c.out
    now_state = progress(c, row, task, report)
    c.out.answer = {"known": True, "active": now_state in ACTIVE_TASK, "state": now_state}
    return c.out


def _report_rows(c: Change, task_id: str, node: str, *, exited: bool
                 ) -> tuple[TaskRow | None, JobRow | None]:
    """The reported task and its job row as stored (the row locked; None
    for a task of another node). SQLite has one writer: what one statement
    reads of the task, its job and (for an exit) its allocation is what is
    there, and the allocation is kept for the exit's release."""
    if c.tx.conn.dialect.name != "postgresql":
        # A task this batch started or ended is read as written (``c.conn``).
        conn = c.conn if c.left_task(task_id) else c.tx.conn
        task, row, alloc = jt.load_report_rows(conn, task_id, releasing=exited)
        if task is None or task.node != node:
            return task, None
        if exited:
            c.tx.read_with(task.allocation_id, alloc)
        return task, c.loaded(row)
    task = jt.load_task(c.conn, task_id)
    if task is None or task.node != node:
        return task, None
    row = c.load(task.job_id)
    # Again, under the job's row lock.
    return jt.load_task(c.conn, task_id), row


def progress(c: Change, row: JobRow, task: TaskRow, report: TaskReport) -> str:
    """A task got further (starting, running); returns its state now."""
    if PROGRESS.get(report.state, -1) <= PROGRESS[task.state]:
        return task.state
    started = report.times.get("started_at", c.now) if report.state == "running" else None
    new = replace(task, state=report.state, started_at=started or task.started_at)
    if report.state == "running" and row.state == JobState.SCHEDULED.value:
        jt.update_job(c.conn, row.id, state=JobState.RUNNING.value)
        c.out.rows[row.id] = replace(row, state=JobState.RUNNING.value)
    jt.update_task(c.conn, task.id, only_from=ACTIVE_TASK, state=new.state,
                   started_at=new.started_at)
    c.tx.event("task.state", task.id, {"job": task.job_id, "index": task.index,
                                       "state": new.state, "node": task.node,
                                       "times": dict(report.times)})
    c.out.tasks.append(new)
    return new.state


# -- nodes (the leader) ---------------------------------------------------------------------


def node_lost(c: Change, node: str, *, epoch: int | None, limit: int = CHUNK) -> Outcome:
    """The node is gone: its tasks end as ``lost`` (requeued per their
    restart policy) and its plain allocations are released as ``node_lost``.
    Ends at most ``limit`` tasks; ``answer["more"]`` says to call again."""
    c.tx.fence(epoch)
    budget = limit
    for job_id in _jobs_on(c.conn, node):
        row = c.load(job_id)
        batch = c.active_tasks(job_id, node=node, limit=budget + 1)
        for task in batch[:budget]:
            if row is not None:
                row = end_task(c, row, task, "lost", f"node {node} lost")
        budget -= min(budget, len(batch))
        if budget <= 0:
            c.out.answer["more"] = True
            return c.out
    for (alloc_id,) in c.conn.execute(sa.select(allocations.c.id).where(
            allocations.c.node == node, allocations.c.state == "active")).all():
        c.tx.release(alloc_id, ReleaseReason.NODE_LOST)
    return c.out


def stop_node_tasks(c: Change, node: str, state: str, reason: str, *,
                    epoch: int | None, limit: int = CHUNK) -> Outcome:
    """Ask for every process on ``node`` to stop (a drain past its deadline);
    at most ``limit`` tasks, ``answer["more"]`` says to call again."""
    c.tx.fence(epoch)
    budget = limit
    for job_id in _jobs_on(c.conn, node):
        row = c.load(job_id)
        if row is None:
            continue
        stop = [t for t in c.active_tasks(job_id, node=node) if not t.stop_state]
        stop_tasks(c, row, stop[:budget], state, reason)
        budget -= min(budget, len(stop))
        if budget <= 0:
            c.out.answer["more"] = True
            break
    return c.out


def stop_unclaimed(c: Change, *, before: float, epoch: int | None,
                   limit: int = CHUNK) -> Outcome:
    """Tasks still ``scheduled`` (no agent said it started them) since before
    ``before``: stopped as cancelled, their jobs waiting to be placed again
    with the reason. On a node with an agent the agent hears the stop (and
    starts nothing); elsewhere they end at once."""
    c.tx.fence(epoch)
    stale = c.conn.execute(sa.select(tasks).where(
        tasks.c.state == "scheduled", tasks.c.created_at < before, tasks.c.stop_state.is_(None),
    ).order_by(tasks.c.created_at).limit(limit + 1)).all()
    for task in (TaskRow(**dict(r._mapping)) for r in stale[:limit]):
        row = c.load(task.job_id)
        if row is None:
            continue
        why = (f"task {task.index} was not picked up on node {task.node} within "
               f"{c.now - task.created_at:.0f} s; placed again")
        row = c.write(replace(row, reason=why))
        stop_tasks(c, row, [task], "cancelled", why)
    c.out.answer["more"] = len(stale) > limit
    return c.out


def _jobs_on(conn: sa.Connection, node: str) -> list[str]:
    return sorted({r[0] for r in conn.execute(sa.select(tasks.c.job_id).where(
        tasks.c.node == node, tasks.c.state.in_(ACTIVE_TASK)))})
