"""Migrations on databases that hold data: for every revision R, a database
written at R (rows inserted with plain SQL, as a server of that revision
would have left them) is upgraded to head, read back by SQL and by the
services a server builds at start, downgraded to R again (R's rows stay),
then to base, and upgraded again from nothing. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from apportion.core.model import Device, Health, NodeState
from apportion.core.records import UsageRow
from apportion.service.auth import Principal, Role
from apportion.service.settings import Settings
from apportion.service.wiring import build
from apportion.store import join_tokens as join_table
from apportion.store import usage_tables
from apportion.store.database import MIGRATIONS, create_engine
from apportion.store.join_tokens import JoinTokenRecord
from apportion.store.schema import metadata


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


REVISIONS = [s.revision for s in reversed(list(ScriptDirectory.from_config(_config())
                                               .walk_revisions()))]
HEAD = REVISIONS[-1]
DUPLICATE_REASON = "a second live attempt of this task (found by migration 0007)"
GiB = 1 << 30


def test_the_revisions_are_the_ones_this_file_seeds() -> None:
    # A new revision needs rows of its own below (and a line in `_seed`).
    assert REVISIONS == ["0001", "0002", "0003", "0004", "0005", "0006", "0007", "0008"]


def _alembic(engine: sa.Engine, step: Callable[[Config, str], None], revision: str) -> None:
    """Run an alembic command on a connection of ours, as ``migrate`` does."""
    config = _config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        step(config, revision)


def _upgrade(engine: sa.Engine, revision: str) -> None:
    _alembic(engine, command.upgrade, revision)


def _downgrade(engine: sa.Engine, revision: str) -> None:
    _alembic(engine, command.downgrade, revision)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _insert(conn: sa.Connection, table: str, rows: list[dict[str, Any]]) -> None:
    columns = list(rows[0])
    quoted = ", ".join(f'"{c}"' for c in columns)
    marks = ", ".join(f":{c}" for c in columns)
    conn.execute(sa.text(f"INSERT INTO {table} ({quoted}) VALUES ({marks})"), rows)


def _j(value: Any) -> str:
    return json.dumps(value)


RUN_SPEC = {"tasks": [{"resources": {"cpu": "2", "memory": "8Gi", "gpu": 1}, "count": 1}],
            "queue": "research", "priority": 5, "name": "train",
            "command": ["python", "train.py"]}
DONE_SPEC = {"resources": {"cpu": "500m"}, "name": "prep", "command": ["echo", "hi"]}


def _seed(conn: sa.Connection, revision: str) -> None:
    """Rows in every table that exists at ``revision``, in its columns."""
    at = REVISIONS.index(revision) + 1  # 1 for 0001, ...
    _insert(conn, "nodes", [
        {"name": "gpu-1", "labels": _j({"zone": "a"}), "specs": _j({"cpu_model": "x9"}),
         "state": "ready", "health": "healthy", "created_at": 100.0, "updated_at": 101.0},
        {"name": "cpu-1", "labels": _j({}), "specs": _j({}), "state": "cordoned",
         "health": "degraded", "created_at": 102.0, "updated_at": 103.0},
    ])
    _insert(conn, "node_resources", [
        {"node": "gpu-1", "resource": "cpu", "capacity": 16000, "allocated": 3500},
        {"node": "gpu-1", "resource": "memory", "capacity": 64 * GiB, "allocated": 8 * GiB},
        {"node": "gpu-1", "resource": "gpu", "capacity": 2, "allocated": 1},
        {"node": "cpu-1", "resource": "cpu", "capacity": 8000, "allocated": 0},
    ])
    _insert(conn, "devices", [
        {"node": "gpu-1", "resource": "gpu", "device_id": f"GPU-{i}", "position": i,
         "model": "H100", "memory": 80 * GiB, "uuid": f"GPU-uuid-{i}", "serial": f"S{i}",
         "attrs": _j({}), "allocation_id": "a-run" if i == 0 else None}
        for i in (0, 1)
    ])
    _insert(conn, "allocations", [
        {"id": "a-run", "node": "gpu-1", "owner": "alice",
         "resources": _j({"cpu": 2000, "memory": 8 * GiB, "gpu": 1}),
         "devices": _j({"gpu": ["GPU-0"]}), "labels": _j({"apportion.job": "j-run"}),
         "state": "active", "reason": None, "created_at": 121.0, "released_at": None},
        {"id": "a-lease", "node": "gpu-1", "owner": "bob", "resources": _j({"cpu": 1000}),
         "devices": _j({}), "labels": _j({}), "state": "active", "reason": None,
         "created_at": 111.0, "released_at": None},
        {"id": "a-dup", "node": "gpu-1", "owner": "alice", "resources": _j({"cpu": 500}),
         "devices": _j({}), "labels": _j({}), "state": "active", "reason": None,
         "created_at": 122.0, "released_at": None},
        {"id": "a-done", "node": "cpu-1", "owner": "alice", "resources": _j({"cpu": 500}),
         "devices": _j({}), "labels": _j({}), "state": "released", "reason": "completed",
         "created_at": 113.0, "released_at": 114.0},
    ])
    _insert(conn, "tokens", [{"id": "tok-ci", "name": "ci", "role": "user",
                              "token_hash": _hash("ci-secret"), "created_at": 90.0}])
    _insert(conn, "events", [{"kind": "node.registered", "subject": "gpu-1", "origin": "old",
                              "data": _j({"resources": {"cpu": 16000}}), "at": 100.0}])
    if at < 2:
        return
    _insert(conn, "queues", [{"name": "research", "quota": _j({"cpu": 32000}), "weight": 2.0,
                              "min_priority": 0, "max_priority": 100, "created_at": 95.0,
                              "updated_at": 96.0}])
    _insert(conn, "jobs", [
        {"id": "j-run", "name": "train", "owner": "alice", "queue": "research", "priority": 5,
         "state": "running", "spec": _j(RUN_SPEC), "submit_time": 120.0, "started_at": 121.0,
         "ended_at": None, "reason": None, "exit_code": None, "attempts": 1, "preemptions": 0},
        {"id": "j-done", "name": "prep", "owner": "alice", "queue": "default", "priority": 0,
         "state": "succeeded", "spec": _j(DONE_SPEC), "submit_time": 112.0,
         "started_at": 113.0, "ended_at": 114.0, "reason": None, "exit_code": 0,
         "attempts": 1, "preemptions": 0},
    ])
    task = {"exit_code": None, "reason": None, "ended_at": None}
    # Before 0007 nothing refused a second live attempt of one task: 0007
    # marks the newer one lost. At 0007 itself it can only be stored lost.
    duplicate = ({"state": "running", "reason": None} if at < 7
                 else {"state": "lost", "reason": DUPLICATE_REASON})
    _insert(conn, "tasks", [
        {**task, "id": "t-run-0", "job_id": "j-run", "index": 0, "attempt": 1, "node": "gpu-1",
         "allocation_id": "a-run", "state": "running", "created_at": 120.5,
         "started_at": 121.0},
        {**task, "id": "t-run-0b", "job_id": "j-run", "index": 0, "attempt": 2,
         "node": "gpu-1", "allocation_id": "a-dup", "created_at": 122.0, "started_at": 122.5,
         **duplicate},
        {**task, "id": "t-done-0", "job_id": "j-done", "index": 0, "attempt": 1,
         "node": "cpu-1", "allocation_id": "a-done", "state": "succeeded", "exit_code": 0,
         "created_at": 112.5, "started_at": 113.0, "ended_at": 114.0},
    ])
    if at >= 3:
        conn.execute(sa.text("UPDATE tasks SET checkpoint = 'checkpoints/j-done/0' "
                             "WHERE id = 't-done-0'"))
        conn.execute(sa.text("UPDATE tasks SET stop_state = 'cancelled', "
                             "stop_reason = 'asked by alice' WHERE id = 't-run-0'"))
    if at >= 4:
        _insert(conn, "history_series", [{
            "key": "utilization{node=gpu-1,resource=cpu}", "metric": "utilization",
            "labels": _j({"node": "gpu-1", "resource": "cpu"})}])
        series = conn.execute(sa.text("SELECT id FROM history_series")).scalar_one()
        _insert(conn, "history_samples", [{"series_id": series, "at": 130.0, "value": 0.25},
                                          {"series_id": series, "at": 140.0, "value": 0.5}])
        _insert(conn, "history_rollups", [{
            "series_id": series, "start": 0.0, "step": 300.0, "min": 0.25, "max": 0.5,
            "mean": 0.375, "count": 2, "last": 0.5}])
    if at >= 5:
        _insert(conn, "task_usage", [{
            "task_id": "t-done-0", "job_id": "j-done", "name": "prep", "owner": "alice",
            "queue": "default", "command": "echo hi", "state": "succeeded",
            "requested": _j({"cpu": 500}), "used": _j({"memory": 1048576, "runtime_s": 1}),
            "started_at": 113.0, "finished_at": 114.0}])
    if at >= 6:
        _insert(conn, "join_tokens", [{
            "id": "jt-1", "token_hash": _hash("join-secret"), "pool": "gpu-pool",
            "node": "pool-node-1", "labels": _j({"pool": "gpu-pool"}), "created_at": 150.0,
            "expires_at": 4_000_000_000.0, "used_at": None}])
    if at >= 7:
        conn.execute(sa.text("UPDATE jobs SET tasks_active = 1, task_failures = 1 "
                             "WHERE id = 'j-run'"))
        conn.execute(sa.text("UPDATE jobs SET tasks_succeeded = 1 WHERE id = 'j-done'"))
        _insert(conn, "blobs", [{"key": "checkpoints/j-done/0", "part": 0, "data": b"state"}])
        _insert(conn, "task_logs", [{"task_id": "t-done-0", "stream": "stdout", "offset": 0,
                                     "data": b"hi\n"}])
    if at >= 8:
        _insert(conn, "login_codes", [{
            "id": "lc-1", "code_hash": _hash("apc_code"), "name": "ci", "role": "user",
            "created_at": 160.0, "expires_at": 220.0, "used_at": 170.0}])


def _rows(conn: sa.Connection, sql: str) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in conn.execute(sa.text(sql))]


def _json(value: Any) -> Any:
    """A JSON column as read by plain SQL: PostgreSQL's driver decodes it, SQLite's not."""
    return json.loads(value) if isinstance(value, str) else value


def _tables(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return set(sa.inspect(conn).get_table_names())


def _check_rows_of(conn: sa.Connection, revision: str) -> None:
    """What ``_seed`` wrote at ``revision``, in the columns every revision has."""
    at = REVISIONS.index(revision) + 1
    assert _rows(conn, "SELECT name, state, health, created_at, updated_at FROM nodes "
                       "ORDER BY name") == [("cpu-1", "cordoned", "degraded", 102.0, 103.0),
                                            ("gpu-1", "ready", "healthy", 100.0, 101.0)]
    assert _rows(conn, "SELECT node, resource, capacity, allocated FROM node_resources "
                       "ORDER BY node, resource") == [
        ("cpu-1", "cpu", 8000, 0), ("gpu-1", "cpu", 16000, 3500),
        ("gpu-1", "gpu", 2, 1), ("gpu-1", "memory", 64 * GiB, 8 * GiB)]
    assert _rows(conn, "SELECT device_id, allocation_id FROM devices ORDER BY position") == [
        ("GPU-0", "a-run"), ("GPU-1", None)]
    assert _rows(conn, "SELECT id, state, reason, released_at FROM allocations "
                       "ORDER BY id") == [("a-done", "released", "completed", 114.0),
                                          ("a-dup", "active", None, None),
                                          ("a-lease", "active", None, None),
                                          ("a-run", "active", None, None)]
    assert _rows(conn, "SELECT id, name, role FROM tokens") == [("tok-ci", "ci", "user")]
    assert _rows(conn, "SELECT kind, subject, origin, at FROM events") == [
        ("node.registered", "gpu-1", "old", 100.0)]
    if at >= 2:
        assert _rows(conn, "SELECT name, weight, min_priority, max_priority FROM queues "
                           "WHERE name = 'research'") == [
            ("research", 2.0, 0, 100)]
        quotas = _rows(conn, "SELECT quota FROM queues WHERE name = 'research'")
        assert [_json(q) for (q,) in quotas] == [{"cpu": 32000}]
        assert _rows(conn, "SELECT id, state, queue, attempts FROM jobs ORDER BY id") == [
            ("j-done", "succeeded", "default", 1), ("j-run", "running", "research", 1)]
        assert [_json(s) for (s,) in _rows(conn, "SELECT spec FROM jobs ORDER BY id")] == [
            DONE_SPEC, RUN_SPEC]
        assert _rows(conn, "SELECT id, job_id, attempt, allocation_id FROM tasks "
                           "ORDER BY id") == [("t-done-0", "j-done", 1, "a-done"),
                                              ("t-run-0", "j-run", 1, "a-run"),
                                              ("t-run-0b", "j-run", 2, "a-dup")]
    if at >= 3:
        assert _rows(conn, "SELECT id, checkpoint, stop_state, stop_reason FROM tasks "
                           "ORDER BY id") == [
            ("t-done-0", "checkpoints/j-done/0", None, None),
            ("t-run-0", None, "cancelled", "asked by alice"),
            ("t-run-0b", None, None, None)]
    if at >= 4:
        assert _rows(conn, "SELECT key, metric FROM history_series") == [
            ("utilization{node=gpu-1,resource=cpu}", "utilization")]
        assert _rows(conn, "SELECT at, value FROM history_samples ORDER BY at") == [
            (130.0, 0.25), (140.0, 0.5)]
        assert _rows(conn, 'SELECT start, step, min, max, mean, count, last '
                           'FROM history_rollups') == [(0.0, 300.0, 0.25, 0.5, 0.375, 2, 0.5)]
    if at >= 5:
        assert _rows(conn, "SELECT task_id, name, owner, command, state, finished_at "
                           "FROM task_usage") == [
            ("t-done-0", "prep", "alice", "echo hi", "succeeded", 114.0)]
    if at >= 6:
        assert _rows(conn, "SELECT id, pool, node, expires_at, used_at FROM join_tokens") == [
            ("jt-1", "gpu-pool", "pool-node-1", 4_000_000_000.0, None)]
    if at >= 8:
        assert _rows(conn, "SELECT id, name, role, expires_at, used_at FROM login_codes") == [
            ("lc-1", "ci", "user", 220.0, 170.0)]


def _check_head(conn: sa.Connection, revision: str) -> None:
    """At head: the rows of ``revision`` plus what 0007 computed from them."""
    _check_rows_of(conn, revision)
    assert _rows(conn, "SELECT version_num FROM alembic_version") == [(HEAD,)]
    assert _rows(conn, "SELECT id, epoch, server_id FROM cluster_leader") == [(1, 0, None)]
    if revision == "0001":
        assert _rows(conn, "SELECT count(*) FROM jobs") == [(0,)]
        return
    assert _rows(conn, "SELECT id, state, reason FROM tasks ORDER BY id") == [
        ("t-done-0", "succeeded", None), ("t-run-0", "running", None),
        ("t-run-0b", "lost", DUPLICATE_REASON)]
    assert _rows(conn, "SELECT id, not_before, tasks_active, tasks_succeeded, task_failures "
                       "FROM jobs ORDER BY id") == [("j-done", None, 0, 1, 0),
                                                    ("j-run", None, 1, 0, 1)]


def _check_services(url: str, data_dir: Path, revision: str) -> None:
    """A server's services, built on the upgraded database as at start."""
    services = build(Settings(data_dir=data_dir, database_url=url, admin_token=None,
                              config_file=None))
    try:
        ledger = services.ledger
        assert sorted(ledger.nodes) == ["cpu-1", "gpu-1"]
        gpu = ledger.node("gpu-1")
        assert (gpu.labels, gpu.specs, gpu.state, gpu.health) == (
            {"zone": "a"}, {"cpu_model": "x9"}, NodeState.READY, Health.HEALTHY)
        assert gpu.resources == {"cpu": 16000, "memory": 64 * GiB, "gpu": 2}
        assert gpu.devices == {"gpu": tuple(
            Device(f"GPU-{i}", "H100", 80 * GiB, f"GPU-uuid-{i}", f"S{i}", {}) for i in (0, 1))}
        assert ledger.node("cpu-1").state is NodeState.CORDONED
        assert ledger.free("gpu-1") == {"cpu": 12500, "memory": 56 * GiB, "gpu": 1}
        assert sorted(ledger.active()) == ["a-dup", "a-lease", "a-run"]
        run = ledger.active()["a-run"]
        assert (run.owner, run.resources, run.devices, run.labels) == (
            "alice", {"cpu": 2000, "memory": 8 * GiB, "gpu": 1}, {"gpu": ("GPU-0",)},
            {"apportion.job": "j-run"})
        principal = asyncio.run(services.auth.authenticate("Bearer ci-secret"))
        assert principal == Principal("ci", Role.USER)
        with services.uow.engine.connect() as conn:
            if REVISIONS.index(revision) + 1 >= 5:
                assert usage_tables.load_usage(conn) == [UsageRow(
                    "t-done-0", "j-done", "prep", "alice", "default", "echo hi", "succeeded",
                    {"cpu": 500}, {"memory": 1048576, "runtime_s": 1}, 113.0, 114.0)]
            if REVISIONS.index(revision) + 1 >= 6:
                assert join_table.find(conn, "join-secret") == JoinTokenRecord(
                    "jt-1", "gpu-pool", "pool-node-1", {"pool": "gpu-pool"}, 150.0,
                    4_000_000_000.0, None)
        jobs = services.jobs
        assert sorted(jobs.queues) == (["default"] if revision == "0001"
                                       else ["default", "research"])
        if revision == "0001":
            assert jobs.cache.jobs == {}
            return
        assert jobs.queues["research"].weight == 2.0
        # Only live jobs are kept in memory; the running one with its live task.
        assert sorted(jobs.cache.jobs) == ["j-run"]
        live = jobs.cache.jobs["j-run"]
        assert sorted(live.tasks) == ["t-run-0"]
        assert [t.resources for t in live.job.tasks] == [
            {"cpu": 2000, "memory": 8 * GiB, "gpu": 1}]
        assert live.job.command == ("python", "train.py")
        row, tasks = asyncio.run(jobs.get("j-done"))
        assert (row.state, row.exit_code, row.tasks_succeeded) == ("succeeded", 0, 1)
        assert [(t.id, t.state, t.exit_code) for t in tasks] == [("t-done-0", "succeeded", 0)]
    finally:
        services.uow.close()


@pytest.fixture
def engine(store_url: str) -> Iterator[sa.Engine]:
    engine = create_engine(store_url, sqlite_synchronous="OFF")
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.mark.parametrize("revision", REVISIONS)
def test_a_database_with_rows_at_each_revision_upgrades_and_downgrades(
        revision: str, engine: sa.Engine, store_url: str, tmp_path: Path) -> None:
    _upgrade(engine, revision)
    with engine.begin() as conn:
        _seed(conn, revision)

    _upgrade(engine, "head")
    with engine.connect() as conn:
        _check_head(conn, revision)
    _check_services(store_url, tmp_path / "server", revision)

    # Back down to the revision the rows were written at: they are all still there.
    _downgrade(engine, revision)
    with engine.connect() as conn:
        _check_rows_of(conn, revision)
        assert _rows(conn, "SELECT version_num FROM alembic_version") == [(revision,)]
    tables_at_revision = _tables(engine)

    # Base: nothing but alembic's own table, and it empty.
    _downgrade(engine, "base")
    assert _tables(engine) == {"alembic_version"}
    with engine.connect() as conn:
        assert _rows(conn, "SELECT count(*) FROM alembic_version") == [(0,)]

    # Up again from nothing, by way of the revision: the same tables there,
    # and at head the schema the metadata describes, empty.
    _upgrade(engine, revision)
    assert _tables(engine) == tables_at_revision
    _upgrade(engine, "head")
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, metadata) == []
        assert _rows(conn, "SELECT count(*) FROM nodes") == [(0,)]
        assert _rows(conn, "SELECT id, epoch FROM cluster_leader") == [(1, 0)]
