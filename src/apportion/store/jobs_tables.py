"""Reading and writing queues, jobs and tasks (SQLAlchemy Core)."""

from __future__ import annotations

import functools
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from apportion.core.model import Allocation
from apportion.core.records import JobRow, QueueRow, TaskRow
from apportion.store.ledger_tables import allocation_from_row, values_update
from apportion.store.schema import allocations, jobs, queues, tasks


def _as(cls: type[Any], row: Any) -> Any:
    return cls(**dict(row._mapping))


# The statements a job's transitions run on every task start and end, built
# once with bound parameters: building a statement and its cache key each
# call cost more than running it on SQLite (a task's end is a dozen of them).
# Updates take their SET columns from the parameters given (``b_`` names are
# the WHERE clause's, never columns).
_LOAD_JOB = sa.select(jobs).where(jobs.c.id == sa.bindparam("b_id"))
_LOAD_JOB_LOCKED = _LOAD_JOB.with_for_update()
_UPDATE_JOB = jobs.update().where(jobs.c.id == sa.bindparam("b_id"))
_INSERT_JOB = jobs.insert()
_INSERT_TASK = tasks.insert()
_TASK_FIELDS = tuple(TaskRow.__dataclass_fields__)
_LOAD_TASK = sa.select(tasks).where(tasks.c.id == sa.bindparam("b_id"))
_UPDATE_TASK = tasks.update().where(tasks.c.id == sa.bindparam("b_id"))
_TASKS_IN_STATES = (sa.select(tasks)
                    .where(tasks.c.job_id == sa.bindparam("b_job"),
                           tasks.c.state.in_(sa.bindparam("b_states", expanding=True)))
                    .order_by(tasks.c.created_at, tasks.c.index))
_ANY_TASK_IN = (sa.select(tasks.c.id)
                .where(tasks.c.job_id == sa.bindparam("b_job"),
                       tasks.c.index.in_(sa.bindparam("b_indexes", expanding=True)),
                       tasks.c.state.in_(sa.bindparam("b_states", expanding=True)))
                .limit(1))

# A report's task with its job row and the task's allocation, in one
# statement instead of three (SQLite: nothing to lock, one writer).
_REPORT_ROWS = (sa.select(*tasks.c, *(c.label(f"j_{c.name}") for c in jobs.c))
                .select_from(tasks.outerjoin(jobs, jobs.c.id == tasks.c.job_id))
                .where(tasks.c.id == sa.bindparam("b_id")))
_REPORT_ROWS_RELEASING = (
    _REPORT_ROWS.add_columns(*(c.label(f"a_{c.name}") for c in allocations.c))
    .outerjoin(allocations, allocations.c.id == tasks.c.allocation_id))
_JOB_FIELDS = tuple(JobRow.__dataclass_fields__)
_ALLOCATION_FIELDS = tuple(c.name for c in allocations.c)


# -- queues -------------------------------------------------------------------


def load_queues(conn: sa.Connection) -> list[QueueRow]:
    return [_as(QueueRow, r) for r in conn.execute(sa.select(queues).order_by(queues.c.name))]


def upsert_queue(conn: sa.Connection, row: QueueRow) -> None:
    """Insert or replace a queue in one statement: an UPDATE that found
    nothing then an INSERT lets two servers on one PostgreSQL both insert,
    and the second failed its whole write with a duplicate key."""
    values = {k: getattr(row, k) for k in QueueRow.__dataclass_fields__}
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    insert = dialect.insert(queues).values(values)
    conn.execute(
        insert.on_conflict_do_update(
            index_elements=[queues.c.name],
            set_={k: insert.excluded[k] for k in values if k not in ("name", "created_at")},
        )
    )


# -- jobs -----------------------------------------------------------------------


def insert_job(conn: sa.Connection, row: JobRow) -> None:
    conn.execute(_INSERT_JOB, {k: getattr(row, k) for k in JobRow.__dataclass_fields__})


def insert_jobs(conn: sa.Connection, rows: list[JobRow]) -> None:
    """Many new jobs in one statement (``insert_job`` of each)."""
    conn.execute(_INSERT_JOB, [{k: getattr(r, k) for k in _JOB_FIELDS} for r in rows])


def update_job(conn: sa.Connection, job_id: str, **values: Any) -> None:
    conn.execute(_UPDATE_JOB, {"b_id": job_id, **values})


JOB_PROGRESS = ("state", "reason", "exit_code", "started_at", "ended_at", "attempts",
                "preemptions", "not_before", "tasks_active", "tasks_succeeded", "task_failures")
"""What a transition changes of a job row (its spec and names never change)."""


def update_jobs(conn: sa.Connection, rows: list[JobRow]) -> None:
    """Write ``JOB_PROGRESS`` of many job rows in one statement."""
    conn.execute(_UPDATE_JOB, [{"b_id": r.id, **{k: getattr(r, k) for k in JOB_PROGRESS}}
                               for r in rows])


def load_job(conn: sa.Connection, job_id: str, *, lock: bool = False) -> JobRow | None:
    """A job row; with ``lock``, held (PostgreSQL: FOR UPDATE) until commit,
    so changes to one job from several servers queue up."""
    locked = lock and conn.dialect.name == "postgresql"
    row = conn.execute(_LOAD_JOB_LOCKED if locked else _LOAD_JOB, {"b_id": job_id}).first()
    return _as(JobRow, row) if row else None


def load_jobs_by_id(conn: sa.Connection, job_ids: list[str]) -> list[JobRow]:
    out: list[JobRow] = []
    for start in range(0, len(job_ids), 500):
        out.extend(
            _as(JobRow, r)
            for r in conn.execute(
                sa.select(jobs).where(jobs.c.id.in_(job_ids[start : start + 500]))
            )
        )
    return out


def load_jobs(
    conn: sa.Connection,
    *,
    states: list[str] | None = None,
    queue: str | None = None,
    owner: str | None = None,
    limit: int = 1000,
    offset: int = 0,
) -> list[JobRow]:
    query = sa.select(jobs)
    if states:
        query = query.where(jobs.c.state.in_(states))
    if queue is not None:
        query = query.where(jobs.c.queue == queue)
    if owner is not None:
        query = query.where(jobs.c.owner == owner)
    query = query.order_by(jobs.c.submit_time.desc(), jobs.c.id).limit(limit).offset(offset)
    return [_as(JobRow, r) for r in conn.execute(query)]


# -- tasks ----------------------------------------------------------------------


def insert_tasks(conn: sa.Connection, rows: list[TaskRow]) -> None:
    if rows:
        conn.execute(_INSERT_TASK, [{k: getattr(r, k) for k in _TASK_FIELDS} for r in rows])


def update_task(
    conn: sa.Connection, task_id: str, *, only_from: tuple[str, ...] | None = None, **values: Any
) -> bool:
    """Change a task; with ``only_from``, only if it is still in one of those
    states (so two reports of one end are applied once)."""
    if only_from:
        params = {"b_id": task_id, **values}
        params.update(zip(_FROM_NAMES, only_from, strict=False))
        return conn.execute(_update_task_from(len(only_from)), params).rowcount == 1
    return conn.execute(_UPDATE_TASK, {"b_id": task_id, **values}).rowcount == 1


_FROM_NAMES = tuple(f"b_from{i}" for i in range(16))


def end_tasks(conn: sa.Connection, ended: list[TaskRow], only_from: tuple[str, ...]) -> bool:
    """Write many tasks' ends (state, exit code, reason, end time, checkpoint)
    in one statement, all or nothing: False when any task was no longer in
    one of ``only_from`` (nothing is then usable: roll back)."""
    if not all(s.isidentifier() for s in only_from):
        raise ValueError(f"not a task state: {only_from}")
    states = ", ".join(f"'{s}'" for s in only_from)
    rows = [(t.id, t.state, t.exit_code, t.reason, t.ended_at, t.checkpoint) for t in ended]
    hit = values_update(
        conn, "UPDATE tasks SET state = v.column2, exit_code = v.column3, reason = v.column4, "
        "ended_at = v.column5, checkpoint = v.column6",
        ["", "", "INTEGER", "", "FLOAT", ""], rows,
        f"tasks.id = v.column1 AND tasks.state IN ({states})")
    return hit == len(rows)


@functools.cache
def _update_task_from(states: int) -> sa.Update:
    """The update of a task still in one of ``states`` states, each state a
    parameter of its own: an expanding parameter is rendered again at every
    execution (a third of the statement's cost, on every task's start and end)."""
    if states > len(_FROM_NAMES):
        raise ValueError(f"a task is updated from at most {len(_FROM_NAMES)} states")
    return _UPDATE_TASK.where(tasks.c.state.in_(
        [sa.bindparam(name) for name in _FROM_NAMES[:states]]))


def load_tasks(
    conn: sa.Connection,
    *,
    job_id: str | None = None,
    node: str | None = None,
    states: list[str] | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> list[TaskRow]:
    query = sa.select(tasks)
    if job_id is not None:
        query = query.where(tasks.c.job_id == job_id)
    if node is not None:
        query = query.where(tasks.c.node == node)
    if states:
        query = query.where(tasks.c.state.in_(states))
    query = query.order_by(tasks.c.created_at, tasks.c.index)
    if limit is not None:
        query = query.limit(limit).offset(offset)
    return [_as(TaskRow, r) for r in conn.execute(query)]


def load_tasks_in(conn: sa.Connection, job_id: str, states: tuple[str, ...]) -> list[TaskRow]:
    """A job's tasks in ``states``, oldest first (every task end asks: the
    statement is built once)."""
    rows = conn.execute(_TASKS_IN_STATES, {"b_job": job_id, "b_states": list(states)})
    return [_as(TaskRow, r) for r in rows]


def any_task_in(conn: sa.Connection, job_id: str, indexes: list[int],
                states: tuple[str, ...]) -> bool:
    """Whether any of these task indexes of the job is in one of ``states``."""
    params = {"b_job": job_id, "b_indexes": indexes, "b_states": list(states)}
    return conn.execute(_ANY_TASK_IN, params).first() is not None


def count_tasks(conn: sa.Connection, job_id: str) -> int:
    return int(
        conn.execute(
            sa.select(sa.func.count()).select_from(tasks).where(tasks.c.job_id == job_id)
        ).scalar_one()
    )


def load_tasks_of(
    conn: sa.Connection, job_ids: list[str], states: list[str] | None = None
) -> list[TaskRow]:
    """Tasks of these jobs (in chunks: SQLite caps bound parameters)."""
    out: list[TaskRow] = []
    for start in range(0, len(job_ids), 500):
        query = sa.select(tasks).where(tasks.c.job_id.in_(job_ids[start : start + 500]))
        if states:
            query = query.where(tasks.c.state.in_(states))
        out.extend(
            _as(TaskRow, r) for r in conn.execute(query.order_by(tasks.c.created_at, tasks.c.index))
        )
    return out


def load_task(conn: sa.Connection, task_id: str) -> TaskRow | None:
    row = conn.execute(_LOAD_TASK, {"b_id": task_id}).first()
    return _as(TaskRow, row) if row else None


def load_report_rows(conn: sa.Connection, task_id: str, *, releasing: bool = True
                     ) -> tuple[TaskRow | None, JobRow | None, Allocation | None]:
    """A task, its job row and (``releasing``) its allocation as stored, in
    one statement: what an agent's report on the task decides on. SQLite
    only (PostgreSQL locks the job row first: ``load_job``)."""
    statement = _REPORT_ROWS_RELEASING if releasing else _REPORT_ROWS
    row = conn.execute(statement, {"b_id": task_id}).first()
    if row is None:
        return None, None, None
    values = row._mapping
    task = TaskRow(**{k: values[k] for k in _TASK_FIELDS})
    job = None if values["j_id"] is None else JobRow(
        **{k: values[f"j_{k}"] for k in _JOB_FIELDS})
    alloc = None if not releasing or values["a_id"] is None else allocation_from_row(
        _Fields({k: values[f"a_{k}"] for k in _ALLOCATION_FIELDS}))
    return task, job, alloc


class _Fields(dict[str, Any]):
    """Columns read by attribute, as a result row's are."""

    def __getattr__(self, name: str) -> Any:
        return self[name]


def task_of_allocation(conn: sa.Connection, alloc_id: str) -> TaskRow | None:
    """The task attempt that holds (or held) an allocation."""
    row = conn.execute(sa.select(tasks).where(tasks.c.allocation_id == alloc_id)).first()
    return _as(TaskRow, row) if row else None


def job_ids_of_tasks(conn: sa.Connection, task_ids: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for start in range(0, len(task_ids), 500):
        chunk = task_ids[start : start + 500]
        out.update(
            (r[0], r[1])
            for r in conn.execute(
                sa.select(tasks.c.id, tasks.c.job_id).where(tasks.c.id.in_(chunk))
            )
        )
    return out
