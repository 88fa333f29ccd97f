"""Job and task rows that units sharing a SQLite transaction write after the
last of them (``service/jobs/later.py``): the same rows, answers and events
as the units each in a transaction of its own, in a handful of statements
for the whole batch."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from apportion.core.model import Node
from apportion.core.records import TaskRow
from apportion.exceptions import Refused
from apportion.service.jobs import TaskReport
from apportion.service.jobs import transitions as t
from apportion.service.jobs.later import LaterJobRows
from apportion.service.settings import Settings
from apportion.service.wiring import Services, build
from apportion.store import jobs_tables as jt
from service.builders import AGENT, as_leader

TABLES = ("jobs", "tasks", "allocations", "node_resources", "task_usage", "events")

SPECS: list[dict[str, Any]] = [
    *({"name": f"ok{i}", "command": ["true"], "resources": {"cpu": "1"}} for i in range(4)),
    {"name": "gang", "command": ["true"], "resources": {"cpu": "1"}, "count": 3, "gang": True},
    {"name": "pair", "command": ["true"], "resources": {"cpu": "1"}, "count": 2},
    {"name": "retry", "command": ["true"], "resources": {"cpu": "1"},
     "restart": {"policy": "on-failure", "max_retries": 2, "backoff": "1h"}},
]


def _server(path: Path, batch_max: int) -> Services:
    return build(Settings(data_dir=path, database_url=None, admin_token=None, config_file=None,
                          providers_file=None, batch_max=batch_max, server_id="s1"))


def _report(name: str, index: int) -> TaskReport:
    """Every task exits 0 but the gang's second and the retried job's, 1;
    the pair's first reports only that it runs."""
    if (name, index) == ("pair", 0):
        return TaskReport("running", times={"started_at": 5.0})
    code = 1 if (name, index) in {("gang", 1), ("retry", 0)} else 0
    return TaskReport("exited", exit_code=code, times={"started_at": 5.0, "exited_at": 6.0},
                      usage={"memory": 1024.0, "cpu_seconds": 0.5, "runtime_s": 1.0})


def _life(s: Services) -> list[Any]:
    """Submit, place and report on every job, each step's calls at once; the
    answers, with ids left out."""
    answers: list[Any] = []

    async def scenario() -> None:
        await s.agents.register(Node("n1", {"cpu": 64000}), AGENT)
        jobs = await asyncio.gather(*(s.jobs.submit(spec, "al") for spec in SPECS))
        names = {job.id: job.name for job in jobs}
        await s.jobs.run_cycle()
        placed = sorted(((names[task.job_id], task.index), task.id)
                        for task in s.jobs.tasks_on("n1"))
        # Each report twice in one batch, as an agent that sent it again would.
        calls = [(key, task) for key, task in placed for _ in range(2)]
        answers.append(await asyncio.gather(*(
            s.jobs.task_report("n1", task, _report(*key)) for key, task in calls)))

    as_leader(s, scenario)
    return answers


def _canonical(s: Services) -> dict[str, Any]:
    """Every row of the job tables, ids named by job name and task index,
    times by their order."""
    with s.uow.engine.connect() as conn:
        rows = {table: [dict(r._mapping) for r in conn.execute(sa.text(f"SELECT * FROM {table}"))]
                for table in TABLES}
    names = {r["id"]: r["name"] for r in rows["jobs"]}
    for r in rows["tasks"]:
        label = f"{names[r['job_id']]}#{r['index']}.{r['attempt']}"
        names[r["id"]], names[r["allocation_id"]] = label, f"alloc {label}"

    def plain(value: Any) -> Any:
        if isinstance(value, str):
            for old, new in names.items():
                value = value.replace(old, new)
            return value
        if isinstance(value, float) and value > 1e9:
            return "a time"
        if isinstance(value, dict):
            return {plain(k): plain(v) for k, v in value.items()}
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value

    out: dict[str, Any] = {}
    for table, found in rows.items():
        kept = [{k: plain(v) for k, v in r.items() if k != "data" or table != "events"}
                for r in found]
        if table == "events":
            kept = [{**k, "data": plain(r["data"])} for k, r in zip(kept, found, strict=True)]
        out[table] = sorted(kept, key=repr)
    return out


def test_units_together_write_the_rows_answers_and_events_of_units_alone(
        tmp_path: Path) -> None:
    together, alone = _server(tmp_path / "together", 256), _server(tmp_path / "alone", 1)
    statements: Counter[str] = Counter()
    sa.event.listen(together.uow._writer, "before_cursor_execute",
                    lambda _c, _k, sql, *_: statements.update([" ".join(sql.split()[:3])]))
    try:
        answers = _life(together)
        assert answers == _life(alone)
        assert _canonical(together) == _canonical(alone)
    finally:
        together.uow.close()
        alone.uow.close()
    # The batch's rows went out in shared statements (and in a unit's own,
    # before it read what the batch had changed: the gang's stop, the
    # repeated reports).
    assert statements["INSERT INTO jobs"] == 1
    assert statements["INSERT INTO allocations"] == 1
    assert statements["INSERT INTO tasks"] < len(SPECS)
    assert statements["UPDATE tasks SET"] < 2 * sum(spec.get("count", 1) for spec in SPECS)


def test_a_task_ended_twice_in_a_batch_is_refused_and_the_units_run_one_by_one(
        tmp_path: Path) -> None:
    """A task's end left for later is conditional as when written at once: a
    unit that ended a task already ended by another (read before) makes the
    batch run again unit by unit, where it ends nothing."""
    s = _server(tmp_path, 256)
    ends: list[str] = []
    sa.event.listen(s.uow._writer, "before_cursor_execute", lambda _c, _k, sql, *_: ends.extend(
        [sql] if sql.startswith("UPDATE tasks SET state = v.column2") else []))

    async def scenario() -> None:
        await s.agents.register(Node("n1", {"cpu": 4000}), AGENT)
        job = await s.jobs.submit({"command": ["true"], "resources": {"cpu": "1"}}, "al")
        await s.jobs.run_cycle()
        _, [task] = await s.jobs.get(job.id)

        def end(c: t.Change, reported: bool, code: int) -> t.Outcome:
            row = c.load(job.id)
            assert row is not None
            t.end_task(c, row, task, "succeeded" if code == 0 else "failed", f"exit {code}",
                       exit_code=code, reported=reported)
            return c.out

        first, second = await asyncio.gather(
            s.jobs.writer.run(lambda c: end(c, False, 0)),
            s.jobs.writer.run(lambda c: end(c, True, 3)))
        assert [x.state for x in first.tasks] == ["succeeded"]
        assert second.tasks == []  # ended by the first: nothing more
        row, [stored] = await s.jobs.get(job.id)
        assert (row.state, stored.state, stored.exit_code) == ("succeeded", "succeeded", 0)
        assert s.ledger.allocated("n1") == {"cpu": 0}
        # The second end was left for later, and refused there, before its release.
        assert len(ends) == 1

    try:
        as_leader(s, scenario)
    finally:
        s.uow.close()


def test_rows_left_for_later_are_read_back_and_an_end_of_an_ended_task_is_refused(
        tmp_path: Path) -> None:
    s = _server(tmp_path, 1)
    rows = LaterJobRows()
    assert not rows
    task = TaskRow("t1", "j1", 0, 1, "n1", "a1", "succeeded", 0, "ok", 1.0, 1.0, 2.0)
    rows.end_task(task)
    assert rows and rows.has_task("t1") and not rows.has_task("t2")
    with s.uow.engine.begin() as conn, pytest.raises(Refused, match="ended already"):
        rows.write_out(conn)
    assert not rows  # forgotten once written (or refused: the batch runs again)
    with s.uow.engine.begin() as conn, pytest.raises(ValueError, match="not a task state"):
        jt.end_tasks(conn, [task], ("running", "x'); --"))
    s.uow.close()
