"""This server's picture of the live jobs: a cache of rows, never the truth.

It is loaded from the store at start and kept level in two ways: what every
transition this server commits changed (``Outcome``) is put in at once, and
the jobs that other servers changed are read again when their events arrive
(``refresh``). Anything in it may be a moment behind the store; every
decision taken from it is checked again by the transaction that makes it
(``transitions.py``), so being behind costs a retry, never a wrong write.

Updates cost what changed, not what a job holds: a 10,000-task job's task
end touches one task here. Two indexes make the hot questions cheap: the job
of each task, and the active tasks of each node (what an agent must run).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import sqlalchemy as sa

from apportion.core.records import JobRow, TaskRow
from apportion.core.scheduling import Job, JobState
from apportion.service.jobs.model import (
    ACTIVE_TASK,
    LIVE,
    is_ending,
    is_live,
    job_of,
    single_unit,
    unit_id_of,
)
from apportion.service.jobs.transitions import Outcome
from apportion.store import jobs_tables as jt

_MISSING = object()

JobListener = Callable[[Job, "JobRow | None", JobRow], None]
"""Called with a job, its row before and after, whenever the row changes."""


@dataclass(eq=False)
class LiveJob:
    """A live job: its row, its core value, and its tasks that still count
    (active ones, and the succeeded ones of a bag still running)."""

    row: JobRow
    job: Job
    tasks: dict[str, TaskRow] = field(default_factory=dict)
    checkpoints: dict[int, str] = field(default_factory=dict)
    """Task index to the id of the task whose checkpoint it resumes from."""
    _units: tuple[Job, ...] | None = None
    _placed: set[int] = field(default_factory=set)
    _open: tuple[Job, ...] | None = None
    """``open_units``, kept until the row or the placed tasks change: the
    leader asks for every waiting job's at every cycle."""

    @property
    def id(self) -> str:
        return self.row.id

    @property
    def state(self) -> str:
        return self.row.state

    @property
    def ending(self) -> bool:
        return is_ending(self.row)

    @property
    def not_before(self) -> float:
        return self.row.not_before or 0.0

    @property
    def units(self) -> tuple[Job, ...]:
        """The job's units, built once: a 10,000-task bag has 10,000."""
        if self._units is None:
            self._units = self.job.units()
        return self._units

    def active(self) -> list[TaskRow]:
        return [t for t in self.tasks.values() if t.state in ACTIVE_TASK]

    def unit_id(self, index: int) -> str:
        return unit_id_of(self.job, index)

    def unit_of(self, task: TaskRow) -> str:
        return unit_id_of(self.job, task.index)

    def unit(self, unit_id: str) -> Job:
        if unit_id == self.job.id:
            return self.job
        return self.units[int(unit_id.rsplit("#", 1)[1])]

    def first_index(self, unit_id: str) -> int:
        """The index of a unit's first task."""
        return 0 if unit_id == self.job.id else int(unit_id.rsplit("#", 1)[1])

    def open_units(self) -> list[Job]:
        """The parts of the job still to be placed: the whole job (gang or one
        task) or each unplaced task of a bag."""
        return list(self.open)

    @property
    def open(self) -> tuple[Job, ...]:
        """``open_units`` as built once (until the row or a task changes)."""
        if self._open is None:
            self._open = self._open_units()
        return self._open

    def _open_units(self) -> tuple[Job, ...]:
        if self.ending or self.row.state not in LIVE:
            return ()
        if single_unit(self.job):
            return () if self._placed else (self.job,)
        placed = self._placed
        return tuple(u for i, u in enumerate(self.units) if i not in placed)

    def set_row(self, row: JobRow) -> None:
        self.row = row
        self._open = None

    def put_task(self, task: TaskRow) -> None:
        if task.state in (*ACTIVE_TASK, "succeeded"):
            self.tasks[task.id] = task
            self._placed.add(task.index)
        elif self.tasks.pop(task.id, None) is not None:
            self._placed.discard(task.index)
        self._open = None
        if task.checkpoint:
            self.checkpoints[task.index] = task.id


class JobCache:
    """Live jobs by id, with their tasks indexed by id and by node."""

    def __init__(self) -> None:
        self.jobs: dict[str, LiveJob] = {}
        self._task_jobs: dict[str, str] = {}
        self._node_tasks: dict[str, dict[str, object]] = {}
        """node -> active task id -> the stop asked of it."""
        self._stopping: dict[str, str] = {}
        """Active task id -> its allocation, for the tasks asked to stop."""
        self.open: dict[str, tuple[Job, ...]] = {}
        """Job id -> its units still to be placed (``open_units``), for the
        jobs with any and no ``not_before``: what a cycle places, kept here
        because the leader asks at every cycle, with thousands waiting. In no
        particular order: every order the core sorts by ends with the unit's id."""
        self.deferred: dict[str, LiveJob] = {}
        """The jobs with units to place and a ``not_before``."""
        self.job_listeners: list[JobListener] = []
        self.node_listeners: list[Callable[[set[str]], None]] = []

    # -- filling ----------------------------------------------------------------

    def load(self, conn: sa.Connection) -> None:
        """Every live job as stored, including ended ones whose processes
        are still stopping."""
        rows = jt.load_jobs(conn, states=list(LIVE), limit=10_000_000)
        known = {r.id for r in rows}
        stopping = {t.job_id for t in jt.load_tasks(conn, states=list(ACTIVE_TASK))} - known
        self._fill(conn, rows + jt.load_jobs_by_id(conn, sorted(stopping)))

    def refresh(self, conn: sa.Connection, job_ids: Iterable[str]) -> None:
        """Read these jobs again as the store has them now."""
        ids = sorted(set(job_ids))
        rows = jt.load_jobs_by_id(conn, ids)
        for gone in set(ids) - {r.id for r in rows}:
            self._drop(gone)
        self._fill(conn, rows)

    def _fill(self, conn: sa.Connection, rows: list[JobRow]) -> None:
        tasks: dict[str, list[TaskRow]] = {}
        for t in jt.load_tasks_of(conn, [r.id for r in rows]):
            tasks.setdefault(t.job_id, []).append(t)
        changed: set[str] = set()
        for row in rows:
            old = self.jobs.get(row.id)
            live = LiveJob(row, old.job if old else job_of(row))
            for t in tasks.get(row.id, []):
                live.put_task(t)
            changed |= self._replace(old, live)
        if changed:
            self._nodes_changed(changed)

    def _replace(self, old: LiveJob | None, new: LiveJob) -> set[str]:
        changed: set[str] = set()
        if old is not None:
            for t in old.tasks.values():
                if t.id not in new.tasks:
                    changed |= self._index(t, gone=True)
        if is_live(new.row):
            self.jobs[new.id] = new
            self._open_changed(new)
            for t in new.tasks.values():
                changed |= self._index(t)
        else:
            self.jobs.pop(new.id, None)
            self._not_open(new.id)
            for t in new.tasks.values():
                changed |= self._index(t, gone=True)
        self._row_changed(new.job, old.row if old else None, new.row)
        return changed

    def apply(self, outcome: Outcome) -> set[str]:
        """Put in what a transition of this server committed; returns the
        ids of jobs that are not cached here and must be read (``refresh``)."""
        missing: set[str] = set()
        changed: set[str] = set(outcome.nodes)
        for row in outcome.rows.values():
            live = self.jobs.get(row.id)
            if live is None:
                if row.tasks_active == 0 and row.state in LIVE:
                    job = outcome.built.get(row.id)
                    # new, nothing placed
                    live = self.jobs[row.id] = LiveJob(row, job_of(row) if job is None else job)
                    self._open_changed(live)
                    self._row_changed(live.job, None, row)
                elif is_live(row):
                    missing.add(row.id)
                continue
            old = live.row
            live.set_row(row)
            self._open_changed(live)
            self._row_changed(live.job, old, row)
        touched: dict[str, LiveJob] = {}
        for task in outcome.tasks:
            live = self.jobs.get(task.job_id)
            if live is None:
                continue
            live.put_task(task)
            touched[live.id] = live
            moved = self._index(task)
            if task.id not in outcome.reported:
                changed |= moved
        # Once a job, after all its tasks: the start of a bag of N tasks
        # would otherwise rebuild its open units N times.
        for live in touched.values():
            self._open_changed(live)
        for row in outcome.rows.values():
            live = self.jobs.get(row.id)
            if live is not None and not is_live(row):
                self._drop(row.id, notify=False)
                changed |= {t.node for t in live.tasks.values() if t.state in ACTIVE_TASK}
        if changed:
            self._nodes_changed(changed)
        return missing

    def _drop(self, job_id: str, *, notify: bool = True) -> None:
        old = self.jobs.pop(job_id, None)
        self._not_open(job_id)
        if old is None:
            return
        changed: set[str] = set()
        for t in old.tasks.values():
            changed |= self._index(t, gone=True)
        if notify and changed:
            self._nodes_changed(changed)

    def _index(self, task: TaskRow, *, gone: bool = False) -> set[str]:
        """Keep the task indexes; the node, if its active tasks changed."""
        if not gone and task.state in (*ACTIVE_TASK, "succeeded"):
            self._task_jobs[task.id] = task.job_id
        else:
            self._task_jobs.pop(task.id, None)
        held = self._node_tasks.setdefault(task.node, {})
        if gone or task.state not in ACTIVE_TASK:
            self._stopping.pop(task.id, None)
            return {task.node} if held.pop(task.id, _MISSING) is not _MISSING else set()
        if held.get(task.id, _MISSING) == task.stop_state:
            return set()
        held[task.id] = task.stop_state
        if task.stop_state:
            self._stopping[task.id] = task.allocation_id
        else:
            self._stopping.pop(task.id, None)
        return {task.node}

    def _open_changed(self, live: LiveJob) -> None:
        """Keep ``open`` and ``deferred`` level with the job's units to place."""
        units = live.open
        if not units:
            self._not_open(live.id)
        elif live.row.not_before:
            self.deferred[live.id] = live
            self.open.pop(live.id, None)
        else:
            self.open[live.id] = units
            self.deferred.pop(live.id, None)

    def _not_open(self, job_id: str) -> None:
        self.open.pop(job_id, None)
        self.deferred.pop(job_id, None)

    def _row_changed(self, job: Job, old: JobRow | None, new: JobRow) -> None:
        for listener in self.job_listeners:
            listener(job, old, new)

    def _nodes_changed(self, nodes: set[str]) -> None:
        for listener in self.node_listeners:
            listener(nodes)

    # -- reading -------------------------------------------------------------------------

    def find_task(self, task_id: str) -> tuple[LiveJob, TaskRow] | None:
        live = self.jobs.get(self._task_jobs.get(task_id, ""))
        if live is None:
            return None
        task = live.tasks.get(task_id)
        return (live, task) if task is not None else None

    def tasks_on(self, node: str) -> list[tuple[LiveJob, TaskRow]]:
        """The active tasks on ``node``, oldest first."""
        out = []
        for task_id in self._node_tasks.get(node, {}):
            found = self.find_task(task_id)
            if found is not None and found[1].state in ACTIVE_TASK:
                out.append(found)
        out.sort(key=lambda lt: (lt[1].created_at, lt[1].index))
        return out

    def stopping(self) -> frozenset[str]:
        """The allocations of the active tasks asked to stop."""
        return frozenset(self._stopping.values())

    def job_of_task(self, task_id: str) -> str | None:
        return self._task_jobs.get(task_id)

    def waiting(self) -> list[LiveJob]:
        return [lj for lj in self.jobs.values()
                if lj.row.state in (JobState.PENDING.value, JobState.PREEMPTED.value)]
