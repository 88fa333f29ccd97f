"""``store.batches.write_batch`` on SQLite and PostgreSQL: a whole batch is
written, or it answers False and its transaction leaves no trace."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from apportion.core.model import Allocation, AllocationState, Device, Node, ReleaseReason
from apportion.store import ledger_tables as tables
from apportion.store.batches import write_batch
from apportion.store.database import create_engine, migrate, writer_engine
from apportion.store.event_log import events_after
from apportion.store.schema import allocations, devices, node_resources

GiB = 2**30
MAX = 2**63 - 1
GPU = Node("gpu-1", {"cpu": 8000, "gpu": 2},
           {"gpu": (Device("0", model="A100"), Device("1", model="A100"))})
CPU = Node("cpu-1", {"cpu": 4000, "memory": 8 * GiB})
BIG = Node("big-1", {"memory": MAX})


@pytest.fixture
def engine(store_url: str) -> Iterator[sa.Engine]:
    engine = create_engine(store_url, sqlite_synchronous="OFF")
    migrate(engine)
    with engine.begin() as conn:
        for node in (GPU, CPU, BIG):
            tables.insert_node(conn, node)
    writer = writer_engine(engine)
    try:
        yield writer
    finally:
        if writer is not engine:
            writer.dispose()
        engine.dispose()


def _alloc(alloc_id: str, node: str, resources: dict[str, int],
           devs: dict[str, tuple[str, ...]] | None = None) -> Allocation:
    return Allocation(alloc_id, node, resources, devs or {}, "alice", {"k": "v"},
                      AllocationState.ACTIVE, 10.0)


def _event(alloc: Allocation, kind: str = "allocation.granted") -> dict[str, Any]:
    return {"kind": kind, "subject": alloc.node, "origin": "s1",
            "data": {"id": alloc.id, "resources": dict(alloc.resources)}, "at": 11.0}


def _state(engine: sa.Engine) -> tuple[Any, ...]:
    with engine.connect() as conn:
        balances = sorted(conn.execute(sa.select(
            node_resources.c.node, node_resources.c.resource, node_resources.c.allocated)).all())
        rows = sorted(conn.execute(sa.select(allocations.c.id, allocations.c.state)).all())
        holders = sorted(conn.execute(sa.select(devices.c.device_id,
                                                devices.c.allocation_id)).all(),
                         key=lambda r: r[0])
        events = [(e.kind, e.data["id"]) for e in events_after(conn, 0)]
    return balances, rows, holders, events


def _write(engine: sa.Engine, grants: list[Allocation], releases: list[Allocation],
           events: list[dict[str, Any]]) -> bool:
    """Like the committer: commit on True, roll everything back on False."""
    with engine.connect() as conn:
        tx = conn.begin()
        ok = write_batch(conn, grants, releases, events)
        if ok:
            tx.commit()
        else:
            tx.rollback()
        return ok


def test_a_batch_writes_rows_balances_devices_and_events(engine: sa.Engine) -> None:
    a1 = _alloc("a1", "gpu-1", {"cpu": 1000, "gpu": 2}, {"gpu": ("1", "0")})
    a2 = _alloc("a2", "cpu-1", {"cpu": 1500, "memory": GiB})
    a3 = _alloc("a3", "cpu-1", {"cpu": 2500, "memory": 7 * GiB})
    a4 = _alloc("a4", "big-1", {"memory": MAX})
    grants = [a1, a2, a3, a4]
    assert _write(engine, grants, [], [_event(a) for a in grants])
    balances, rows, holders, events = _state(engine)
    assert ("cpu-1", "cpu", 4000) in balances and ("cpu-1", "memory", 8 * GiB) in balances
    assert ("gpu-1", "gpu", 2) in balances and ("big-1", "memory", MAX) in balances
    assert rows == [(a, "active") for a in ("a1", "a2", "a3", "a4")]
    assert holders == [("0", "a1"), ("1", "a1")]
    assert events == [("allocation.granted", a) for a in ("a1", "a2", "a3", "a4")]
    with engine.connect() as conn:
        assert tables.load_allocation(conn, "a1") == a1
    # Releases and new grants in one batch, on the same node: net change.
    r1 = a1.released(ReleaseReason.COMPLETED, 20.0)
    r2 = a2.released(ReleaseReason.CANCELLED, 20.0)
    a5 = _alloc("a5", "gpu-1", {"cpu": 8000, "gpu": 1}, {"gpu": ("0",)})
    assert _write(engine, [a5], [r1, r2],
                  [_event(r1, "allocation.released"), _event(r2, "allocation.released"),
                   _event(a5)])
    balances, rows, holders, events = _state(engine)
    assert ("gpu-1", "cpu", 8000) in balances and ("gpu-1", "gpu", 1) in balances
    assert ("cpu-1", "cpu", 2500) in balances
    assert dict(rows) == {"a1": "released", "a2": "released", "a3": "active", "a4": "active",
                          "a5": "active"}
    assert holders == [("0", "a5"), ("1", None)]
    assert events[-3:] == [("allocation.released", "a1"), ("allocation.released", "a2"),
                           ("allocation.granted", "a5")]
    with engine.connect() as conn:
        stored = tables.load_allocation(conn, "a1")
    assert stored is not None and stored.reason is ReleaseReason.COMPLETED


@pytest.mark.parametrize("case", ["over_capacity", "past_the_largest_sum", "taken_device",
                                  "unknown_node", "released_twice", "release_in_batch"])
def test_a_batch_the_store_disagrees_with_answers_false_and_leaves_no_trace(
    engine: sa.Engine, case: str
) -> None:
    held = _alloc("h1", "gpu-1", {"cpu": 1000, "gpu": 1}, {"gpu": ("0",)})
    big = _alloc("b1", "big-1", {"memory": 5})
    assert _write(engine, [held, big], [], [_event(held), _event(big)])
    before = _state(engine)
    ok = _alloc("ok", "cpu-1", {"cpu": 1000})
    grants: list[Allocation] = [ok]
    releases: list[Allocation] = []
    if case == "over_capacity":
        grants.append(_alloc("x", "cpu-1", {"cpu": 3001}))
    elif case == "past_the_largest_sum":
        grants.append(_alloc("x", "big-1", {"memory": MAX}))
    elif case == "taken_device":
        grants.append(_alloc("x", "gpu-1", {"gpu": 1}, {"gpu": ("0",)}))
    elif case == "unknown_node":
        grants.append(_alloc("x", "gone-1", {"cpu": 1}))
    elif case == "released_twice":
        r = held.released(ReleaseReason.COMPLETED, 20.0)
        assert _write(engine, [], [r], [_event(r, "allocation.released")])
        before = _state(engine)
        releases.append(r)
    elif case == "release_in_batch":
        releases.append(ok.released(ReleaseReason.COMPLETED, 20.0))
    events = [_event(a) for a in grants]
    assert _write(engine, grants, releases, events) is False
    assert _state(engine) == before


@pytest.mark.postgres
def test_a_lost_postgres_connection_is_an_operational_error_and_the_next_batch_works(
    pg_url: str,
) -> None:
    """What the committer retries: the batch fails as OperationalError, and
    the pool hands out a fresh connection for the next try."""
    import psycopg

    engine = create_engine(pg_url)
    migrate(engine)
    with engine.begin() as conn:
        tables.insert_node(conn, CPU)
    writer = writer_engine(engine)
    try:
        with writer.connect() as conn:  # a pooled connection, then its server process dies
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        a1 = _alloc("a1", "cpu-1", {"cpu": 1000})
        with pytest.raises(sa.exc.OperationalError):
            _write(writer, [a1], [], [_event(a1)])
        assert _write(writer, [a1], [], [_event(a1)])
        assert ("cpu-1", "cpu", 1000) in _state(writer)[0]
    finally:
        writer.dispose()
        engine.dispose()


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[sa.Engine]:
    engine = create_engine(f"sqlite:///{tmp_path}/a.db", sqlite_synchronous="OFF")
    migrate(engine)
    with engine.begin() as conn:
        for node in (GPU, CPU, BIG):
            tables.insert_node(conn, node)
    try:
        yield engine
    finally:
        engine.dispose()


def test_a_sqlite_batch_runs_its_statements_on_the_driver_cursor(
        sqlite_engine: sa.Engine) -> None:
    """SQLAlchemy executes the Core statement that frees released devices,
    not the batch's multi-row statements (they run on one sqlite3 cursor,
    ``tables.on_cursor``; BEGIN too goes to the driver): the same rows are
    written."""
    engine = sqlite_engine
    seen: list[str] = []
    sa.event.listen(engine, "before_cursor_execute",
                    lambda _c, _k, sql, *_: seen.append(" ".join(sql.split()[:2])))
    held = _alloc("a1", "gpu-1", {"cpu": 1000, "gpu": 1}, {"gpu": ("0",)})
    plain = _alloc("a2", "cpu-1", {"cpu": 1500, "memory": GiB})
    assert _write(engine, [held, plain], [], [_event(held), _event(plain)])
    assert seen == []
    gone = held.released(ReleaseReason.COMPLETED, 20.0)
    assert _write(engine, [], [gone], [_event(gone, "allocation.released")])
    assert seen == ["UPDATE devices"]
    balances, rows, holders, events = _state(engine)
    assert ("cpu-1", "cpu", 1500) in balances and ("gpu-1", "gpu", 0) in balances
    assert rows == [("a1", "released"), ("a2", "active")]
    assert holders == [("0", None), ("1", None)]
    assert events == [("allocation.granted", "a1"), ("allocation.granted", "a2"),
                      ("allocation.released", "a1")]


def test_a_driver_error_on_the_lent_cursor_is_raised_as_sqlalchemys(
        sqlite_engine: sa.Engine) -> None:
    """What the committer tells apart (it retries an OperationalError, a unit
    refused by a constraint is an IntegrityError) holds on the driver's cursor
    too: a second row with a stored id is sqlalchemy's IntegrityError, and a
    write while another connection holds the database is its OperationalError."""
    engine = sqlite_engine
    first = _alloc("a1", "cpu-1", {"cpu": 1000})
    assert _write(engine, [first], [], [_event(first)])
    again = _alloc("a1", "cpu-1", {"cpu": 1000})
    with pytest.raises(sa.exc.IntegrityError):
        _write(engine, [again], [], [_event(again)])
    assert _state(engine)[1] == [("a1", "active")]
    locked = create_engine(str(engine.url), sqlite_synchronous="OFF")
    with locked.connect() as holder, engine.connect() as conn:
        tx = conn.begin()
        conn.exec_driver_sql("PRAGMA busy_timeout=0")
        conn.exec_driver_sql("SELECT 1 FROM allocations").all()
        held = holder.begin()
        holder.exec_driver_sql("UPDATE nodes SET updated_at = 1")
        late = _alloc("a2", "cpu-1", {"cpu": 1000})
        with pytest.raises(sa.exc.OperationalError):
            write_batch(conn, [late], [], [_event(late)])
        tx.rollback()
        held.rollback()
    locked.dispose()


def test_active_rows_are_inserted_without_binding_a_none(sqlite_engine: sa.Engine) -> None:
    """A grant's row has its state, reason and release time written as
    literals (sqlite3 binds a None through a failed adapter lookup); a
    released row binds them. Both read back as they were."""
    engine = sqlite_engine
    bound: list[tuple[Any, ...]] = []
    sa.event.listen(engine, "before_cursor_execute", lambda _c, _k, sql, params, *_:
                    bound.append(params) if sql.startswith("INSERT INTO allocations") else None)
    active = [_alloc("a1", "cpu-1", {"cpu": 1000}), _alloc("a2", "cpu-1", {"cpu": 5})]
    gone = _alloc("a3", "cpu-1", {"cpu": 7}).released(ReleaseReason.COMPLETED, 20.0)
    with engine.begin() as conn:
        tables.insert_allocations(conn, active)
        tables.insert_allocations(conn, [gone])
    assert len(bound) == 2 and None not in bound[0]
    assert bound[1][-4:] == ("released", "completed", 10.0, 20.0)
    with engine.connect() as conn:
        assert [tables.load_allocation(conn, a.id) for a in (*active, gone)] == [*active, gone]


def _statements(monkeypatch: pytest.MonkeyPatch, limit: int) -> list[tuple[str, int]]:
    """Each statement the batch functions run, (its first words, values bound),
    with at most ``limit`` values to a statement."""
    monkeypatch.setattr(tables, "PARAMETERS_PER_STATEMENT", limit)
    seen: list[tuple[str, int]] = []
    real = tables._execute

    def counted(conn: sa.Connection, sql: str, params: tuple[Any, ...]) -> int:
        seen.append((" ".join(sql.split()[:3]), len(params)))
        return real(conn, sql, params)

    monkeypatch.setattr(tables, "_execute", counted)
    return seen


def test_a_batch_past_one_statements_values_is_written_in_several(
        sqlite_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    # SQLite refuses a statement with more than 32,766 values by default: a
    # committer batch of many units' grants is split, with the same outcome.
    # (PostgreSQL's batch binds one JSON document a statement.)
    seen = _statements(monkeypatch, 10)
    test_a_batch_writes_rows_balances_devices_and_events(sqlite_engine)
    assert max(n for _, n in seen) == 10
    assert [n for s, n in seen if s == "INSERT INTO allocations"] == [7, 7, 7, 7, 7]
    assert [n for s, n in seen if s == "UPDATE devices SET"][:1] == [8]


def test_a_device_taken_in_a_later_statement_still_refuses_the_whole_batch(
        sqlite_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = sqlite_engine
    held = _alloc("h", "gpu-1", {"gpu": 1}, {"gpu": ("1",)})
    assert _write(engine, [held], [], [_event(held)])
    before = _state(engine)
    _statements(monkeypatch, 4)  # one device a statement
    late = _alloc("late", "gpu-1", {"gpu": 2}, {"gpu": ("0", "1")})
    assert not _write(engine, [_alloc("c", "cpu-1", {"cpu": 1000}), late], [], [])
    assert _state(engine) == before
