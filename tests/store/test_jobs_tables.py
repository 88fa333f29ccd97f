"""A report's rows in one statement (``jobs_tables.load_report_rows``): the
task, its job row and its allocation exactly as the three plain reads give
them, with None for what is not stored."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from apportion.core.model import Allocation, AllocationState, ReleaseReason
from apportion.core.records import JobRow, TaskRow
from apportion.store import jobs_tables as jt
from apportion.store import ledger_tables as tables
from apportion.store.database import create_engine, migrate


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    """A migrated SQLite store (the one-statement read is SQLite's)."""
    store = create_engine(f"sqlite:///{tmp_path / 'jobs.db'}", sqlite_synchronous="OFF")
    migrate(store)
    yield store
    store.dispose()


def _job(job_id: str) -> JobRow:
    return JobRow(job_id, "name", "alice", "default", 3, "running",
                  {"command": ["true"], "resources": {"cpu": "1"}, "labels": {"a": "b"}},
                  10.0, 11.0, None, None, None, 1, 0, None, 1, 0, 0)


def _task(task_id: str, job_id: str, alloc_id: str, index: int) -> TaskRow:
    return TaskRow(task_id, job_id, index, 1, "n1", alloc_id, "running", None, None, 11.0, 12.5,
                   None, "ckpt", None, None, 4)


def _alloc(alloc_id: str, *, released: bool = False) -> Allocation:
    alloc = Allocation(alloc_id, "n1", {"cpu": 1000, "memory": 2**30}, {"gpu": ("0", "1")},
                       "job:j1", {"apportion.io/job": "j1"}, AllocationState.ACTIVE, 11.0)
    return alloc.released(ReleaseReason.COMPLETED, 13.0) if released else alloc


def _plain(conn: sa.Connection, task_id: str) -> tuple[object, object, object]:
    task = jt.load_task(conn, task_id)
    if task is None:
        return None, None, None
    return task, jt.load_job(conn, task.job_id), tables.load_allocation(conn, task.allocation_id)


def test_a_reports_rows_in_one_statement_are_the_plain_reads(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        jt.insert_job(conn, _job("j1"))
        tables.insert_allocations(conn, [_alloc("a1"), _alloc("a2", released=True)])
        jt.insert_tasks(conn, [_task("t1", "j1", "a1", 0), _task("t2", "j1", "a2", 1),
                               _task("t3", "no-job", "a1", 0), _task("t4", "j1", "no-alloc", 2)])
        for task_id in ("t1", "t2", "t3", "t4", "no-task"):
            got = jt.load_report_rows(conn, task_id)
            assert got == _plain(conn, task_id), task_id
            task, job, _ = _plain(conn, task_id)
            assert jt.load_report_rows(conn, task_id, releasing=False) == (task, job, None)
        task, job, alloc = jt.load_report_rows(conn, "t2")
        assert (job, alloc) == (_job("j1"), _alloc("a2", released=True))


def test_a_task_changes_only_from_the_states_named(engine: sa.Engine) -> None:
    """``only_from`` with one to three states (each a parameter of its own)."""
    with engine.begin() as conn:
        jt.insert_tasks(conn, [_task("t1", "j1", "a1", 0)])
        assert not jt.update_task(conn, "t1", only_from=("scheduled",), state="failed")
        assert not jt.update_task(conn, "t1", only_from=("scheduled", "starting"),
                                  state="failed")
        assert jt.update_task(conn, "t1", only_from=("scheduled", "starting", "running"),
                              state="succeeded", exit_code=0)
        assert not jt.update_task(conn, "t1", only_from=("running",), state="failed")
        assert (jt.load_task(conn, "t1") or _task("", "", "", 0)).state == "succeeded"
