"""Job and task rows that the units of one SQLite transaction write together.

A job's life on the server is a submission, a start and an end, each a unit
of work, and units queued at the same moment share a transaction (the group
committer). Each wrote its job and task rows with statements of its own: a
job row inserted, updated at its start and at its end, a task inserted and
ended, five statements a job whatever the batch, half of what a job's life
cost the server in statements (``bench/README.md``, h25-e2e). Here the units
of a shared SQLite transaction leave those rows, and write them after the
last unit in four statements for the whole batch, as their events and
releases are (``unit_of_work._Shared``).

What stays true:

* A unit reads back what earlier units of the batch left here: ``Change``
  takes a job row from here before the store, and writes every row out
  before any statement of its own that reads jobs or tasks otherwise
  (``Change.conn``). A report whose task is here writes them out first.
* A task's end is conditional, as when written at once: the statement ends
  only tasks still active, and should one not be, the batch is refused and
  its units run again each in a savepoint, writing as they go.
* A row written out is the row the unit would have written: the same
  columns, in the same transaction, before it commits.
"""

from __future__ import annotations

import sqlalchemy as sa

from apportion.core.records import JobRow, TaskRow
from apportion.exceptions import Refused
from apportion.service.jobs.model import ACTIVE_TASK
from apportion.store import jobs_tables as jt


class LaterJobRows:
    """Rows left by a transaction's units: new jobs, changed jobs (each
    as the last unit left it), new tasks, ended tasks."""

    def __init__(self) -> None:
        self.new_jobs: dict[str, JobRow] = {}
        self.jobs: dict[str, JobRow] = {}
        self.new_tasks: dict[str, TaskRow] = {}
        self.ended: dict[str, TaskRow] = {}

    def __bool__(self) -> bool:
        return bool(self.new_jobs or self.jobs or self.new_tasks or self.ended)

    def job(self, job_id: str) -> JobRow | None:
        """The job row as a unit of the batch left it, if one did."""
        row = self.jobs.get(job_id)
        return row if row is not None else self.new_jobs.get(job_id)

    def has_task(self, task_id: str) -> bool:
        return task_id in self.new_tasks or task_id in self.ended

    def add_job(self, row: JobRow) -> None:
        if row.id in self.new_jobs:
            raise Refused(f"job {row.id} is inserted twice")  # as its row's key would
        self.new_jobs[row.id] = row

    def put_job(self, row: JobRow) -> None:
        if row.id in self.new_jobs:
            self.new_jobs[row.id] = row  # inserted as it is now
        else:
            self.jobs[row.id] = row

    def add_tasks(self, rows: list[TaskRow]) -> None:
        if any(r.id in self.new_tasks for r in rows) or len({r.id for r in rows}) < len(rows):
            raise Refused("a task is inserted twice")  # as its row's key would
        self.new_tasks.update((r.id, r) for r in rows)

    def end_task(self, ended: TaskRow) -> None:
        """A task read active in this unit, and ended."""
        self.ended[ended.id] = ended

    def write_out(self, conn: sa.Connection) -> None:
        """Write every row left here, then forget them."""
        new_jobs, jobs, new_tasks, ended = self.new_jobs, self.jobs, self.new_tasks, self.ended
        self.new_jobs, self.jobs, self.new_tasks, self.ended = {}, {}, {}, {}
        if new_jobs:
            jt.insert_jobs(conn, list(new_jobs.values()))
        if new_tasks:
            jt.insert_tasks(conn, list(new_tasks.values()))
        if ended and not jt.end_tasks(conn, list(ended.values()), ACTIVE_TASK):
            raise Refused("a task this batch ended had ended already; its units run again "
                          "one by one")
        if jobs:
            jt.update_jobs(conn, list(jobs.values()))
