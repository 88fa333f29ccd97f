"""The unit of work (``service/unit_of_work.py``): events carry their
server and time, a unit commits whole or not at all, a server follows only
the others' events, and ``Tx`` refuses what the stored ledger refuses."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from apportion.core.model import Allocation, AllocationState, Node, ReleaseReason
from apportion.core.records import UsageRow
from apportion.exceptions import NotLeader, Refused
from apportion.service.unit_of_work import Tx, UnitOfWork
from apportion.service.wiring import Services
from apportion.store.database import create_engine, migrate
from apportion.store.event_log import events_after
from apportion.store.ledger_tables import insert_node
from apportion.store.schema import cluster_leader


@pytest.fixture
def engine(sqlite_engine: sa.Engine) -> sa.Engine:
    """A migrated store on SQLite alone (``conftest.py``)."""
    return sqlite_engine


def _kinds(uow: UnitOfWork) -> list[tuple[str, str, str]]:
    return [(e.kind, e.subject, e.origin) for e in uow.read_now(lambda c: events_after(c, 0))]


def test_event_rows_name_their_server_and_the_clock_time(engine: sa.Engine) -> None:
    uow = UnitOfWork(engine, origin="s1", clock=lambda: 123.5)
    try:
        assert uow.event_rows([("node.added", "n1", {"cpu": 4})]) == [
            {"kind": "node.added", "subject": "n1", "origin": "s1", "data": {"cpu": 4},
             "at": 123.5}]
    finally:
        uow.close()


def test_a_unit_that_fails_leaves_nothing_and_the_next_one_commits(engine: sa.Engine) -> None:
    uow = UnitOfWork(engine, origin="s1")

    def failing(conn: sa.Connection) -> None:
        uow.event(conn, "job.submitted", "j-1", {})
        raise Refused("the change is refused halfway")

    def passing(conn: sa.Connection) -> str:
        uow.event(conn, "job.submitted", "j-2", {})
        return "done"

    async def scenario() -> None:
        with pytest.raises(Refused, match="halfway"):
            await uow.write_unit(failing)
        assert await uow.write_unit(passing) == "done"

    try:
        asyncio.run(scenario())
        assert _kinds(uow) == [("job.submitted", "j-2", "s1")]
    finally:
        uow.close()


def test_a_server_follows_the_other_servers_events_each_once(engine: sa.Engine) -> None:
    a, b = UnitOfWork(engine, origin="a"), UnitOfWork(engine, origin="b")

    def note(uow: UnitOfWork, subject: str) -> None:
        asyncio.run(uow.write(lambda conn: uow.event(conn, "node.updated", subject, {})))

    try:
        note(a, "before-b-started")
        b.start_following()  # what was written before b started is in its memory already
        note(a, "n1")
        note(b, "n2")
        note(a, "n3")
        seen = asyncio.run(b.others_events())
        assert [(kind, subject, origin) for _, kind, subject, origin in seen] == [
            ("node.updated", "n1", "a"), ("node.updated", "n3", "a")]
        assert asyncio.run(b.others_events()) == []
    finally:
        a.close()
        b.close()


def test_tx_grants_only_what_the_stored_balance_allows_and_releases_once(
        services: Services) -> None:
    asyncio.run(services.ledger.register_node(Node("n1", {"cpu": 4000})))
    uow = services.uow

    def alloc(alloc_id: str, cpu: int) -> Allocation:
        return Allocation(alloc_id, "n1", {"cpu": cpu}, {}, "alice", {}, AllocationState.ACTIVE,
                          1.0)

    with uow.engine.begin() as conn:
        tx = Tx(conn, uow.events, now=2.0)
        tx.grant_all([alloc("a1", 3000)])
        with pytest.raises(Refused, match="node n1 no longer has room for this grant"):
            tx.grant(alloc("a2", 1001))
        released = tx.release("a1", ReleaseReason.COMPLETED)
        assert released is not None
        assert (released.reason, released.released_at) == (ReleaseReason.COMPLETED, 2.0)
        assert tx.release("a1", ReleaseReason.COMPLETED) is None
        assert tx.release("no-such-allocation", ReleaseReason.COMPLETED) is None
        assert [a.id for a in tx.granted] == ["a1"]
        assert [a.id for a in tx.released] == ["a1"]
        tx.flush()
    assert [k for k, _, _ in _kinds(uow) if k.startswith("allocation.")] == [
        "allocation.granted", "allocation.released"]



def _events(uow: UnitOfWork) -> list[tuple[int, str, str, str, object, float]]:
    return [(e.id, e.kind, e.subject, e.origin, e.data, e.at)
            for e in uow.read_now(lambda c: events_after(c, 0))]


def _epoch_row(engine: sa.Engine, epoch: int) -> None:
    with engine.begin() as conn:
        conn.execute(cluster_leader.delete())
        conn.execute(cluster_leader.insert().values(id=1, epoch=epoch, server_id="s1"))


def _unit(uow: UnitOfWork, i: int, epoch: int, *, refuse: bool = False
          ) -> Callable[[sa.Connection], int]:
    def write(conn: sa.Connection) -> int:
        tx = Tx(conn, uow.events, now=1.0)
        tx.fence(epoch)
        uow.event(conn, "job.submitted", f"j{i}", {"i": i})
        tx.event("job.placed", f"j{i}", {"tasks": [i]})
        tx.event("task.state", f"t{i}", {"state": "running"})
        tx.flush()
        if refuse:
            raise Refused(f"unit {i} refused")
        return i
    return write


def test_units_sharing_a_transaction_write_what_each_alone_would(
        engine: sa.Engine, tmp_path: Path) -> None:
    """Units queued together write their events in one statement after the
    last of them and read the leader's epoch once: the same event rows, ids
    included, as the units one at a time; a refused unit leaves none of its
    events, and a superseded epoch is refused all the same."""
    other = create_engine(f"sqlite:///{tmp_path}/alone.db")
    migrate(other)
    together = UnitOfWork(engine, origin="s1", clock=lambda: 7.5)
    alone = UnitOfWork(other, origin="s1", clock=lambda: 7.5)
    for store in (engine, other):
        _epoch_row(store, 3)
    statements: list[str] = []
    sa.event.listen(together._writer, "before_cursor_execute",
                    lambda _c, _k, sql, *_: statements.append(" ".join(sql.split()[:3])))

    async def queued(refused: int | None, epoch: int = 3) -> list[object]:
        return list(await asyncio.gather(*(
            together.write_unit(_unit(together, i, epoch, refuse=i == refused))
            for i in range(5)), return_exceptions=True))

    async def one_by_one(refused: int | None) -> None:
        for i in range(5):
            if i != refused:
                await alone.write_unit(_unit(alone, i, 3))

    try:
        assert asyncio.run(queued(None)) == [0, 1, 2, 3, 4]
        assert statements.count("INSERT INTO events") == 1
        assert statements.count("SELECT cluster_leader.epoch FROM") == 1
        answers = asyncio.run(queued(3))
        assert [type(a).__name__ for a in answers] == ["int"] * 3 + ["Refused", "int"]
        stale = asyncio.run(queued(None, epoch=2))
        assert all(isinstance(a, NotLeader) for a in stale)
        for refused in (None, 3):
            asyncio.run(one_by_one(refused))
        assert _events(together) == _events(alone)
    finally:
        together.close()
        alone.close()


def _held(i: int, node: str = "n1") -> Allocation:
    return Allocation(f"a{i}", node, {"cpu": 1000 + i}, {}, "alice", {}, AllocationState.ACTIVE,
                      1.0)


def _release_unit(uow: UnitOfWork, i: int, alloc: str) -> Callable[[sa.Connection], object]:
    """What a task's end writes: its allocation released, its usage row, its event."""
    def write(conn: sa.Connection) -> object:
        tx = Tx(conn, uow.events, now=2.0 + i)
        released = tx.release(alloc, ReleaseReason.COMPLETED)
        tx.usage(UsageRow(f"t{i}", f"j{i}", "job", "alice", "default", "true", "succeeded",
                          {"cpu": 1000}, {"memory": i}, 1.0, 2.0 + i))
        tx.event("task.state", f"t{i}", {"i": i})
        tx.flush()
        return None if released is None else (released.id, released.released_at)
    return write


def _two_stores(engine: sa.Engine, tmp_path: Path, cpu: int, held: list[Allocation]
                ) -> tuple[UnitOfWork, UnitOfWork, list[str]]:
    """Units over ``engine`` (queued together) and over a store of their own
    (one at a time), each with node n1 of ``cpu`` holding ``held``; and the
    first words of every statement the first runs."""
    other = create_engine(f"sqlite:///{tmp_path}/alone.db")
    migrate(other)
    together = UnitOfWork(engine, origin="s1", clock=lambda: 7.5)
    alone = UnitOfWork(other, origin="s1", clock=lambda: 7.5)
    for store in (engine, other):
        with store.begin() as conn:
            insert_node(conn, Node("n1", {"cpu": cpu}))
            tx = Tx(conn, together.events, now=1.0)
            tx.grant_all(held)
            tx.flush()
    statements: list[str] = []
    sa.event.listen(together._writer, "before_cursor_execute",
                    lambda _c, _k, sql, *_: statements.append(" ".join(sql.split()[:3])))
    return together, alone, statements


def _rows(engine: sa.Engine) -> dict[str, list[tuple[object, ...]]]:
    with engine.connect() as conn:
        return {t: sorted(map(tuple, conn.execute(sa.text(f"SELECT * FROM {t}"))), key=repr)
                for t in ("allocations", "node_resources", "task_usage", "events")}


@pytest.mark.parametrize("allocs", [
    ["a0", "a1", "a2", "a3"],
    ["a0", "a1", "a1", "a3"],  # one released twice: the batch runs again unit by unit
    ["a0", "a9", "a2", "a2"],  # not active at all, and twice
])
def test_units_sharing_a_transaction_release_and_record_usage_as_each_alone(
        engine: sa.Engine, tmp_path: Path, allocs: list[str]) -> None:
    """On SQLite the releases and usage rows of units queued together are
    written after the last of them, in one statement each: the same rows,
    answers and events as the units one at a time."""
    together, alone, statements = _two_stores(engine, tmp_path, 64000,
                                              [_held(i) for i in range(4)])

    async def queued() -> list[object]:
        return list(await asyncio.gather(*(
            together.write_unit(_release_unit(together, i, a)) for i, a in enumerate(allocs))))

    async def one_by_one() -> list[object]:
        return [await alone.write_unit(_release_unit(alone, i, a))
                for i, a in enumerate(allocs)]

    try:
        answers = asyncio.run(queued())
        assert answers == asyncio.run(one_by_one())
        assert _rows(engine) == _rows(alone.engine)
        if len(set(allocs)) == len(allocs):
            assert statements.count("UPDATE allocations SET") == 1
            assert statements.count("INSERT INTO task_usage") == 1
    finally:
        together.close()
        alone.close()


def _grant_unit(uow: UnitOfWork, i: int, grant: str | None, release: str | None
                ) -> Callable[[sa.Connection], object]:
    """A task's start (its grant) or end (a release), as a job's units write them."""
    def write(conn: sa.Connection) -> object:
        tx = Tx(conn, uow.events, now=2.0 + i)
        if grant is not None:
            tx.grant_all([Allocation(grant, "n1", {"cpu": 1000}, {}, "alice", {},
                                     AllocationState.ACTIVE, 1.0)])
        released = tx.release(release, ReleaseReason.COMPLETED) if release else None
        tx.flush()
        return [a.id for a in tx.granted], None if released is None else released.id
    return write


@pytest.mark.parametrize("steps", [
    [("a0", None), ("a1", None), ("a2", None), ("a3", None)],
    [("a0", None), ("a1", None), ("a2", None), ("a3", None), ("a4", None)],  # one too many
    [("a0", None), (None, "a0"), ("a1", None), ("a1", None)],  # released at once; twice
    [("a0", "a0"), (None, "a0"), ("a2", None)],  # released in its own unit, then again
])
def test_units_sharing_a_transaction_grant_as_each_alone(
        engine: sa.Engine, tmp_path: Path, steps: list[tuple[str | None, str | None]]) -> None:
    """On SQLite the grants of units queued together are written after the
    last of them, in one statement for the balances and one for the rows: the
    same rows, answers and events as the units one at a time (where the
    balance refuses the last grant, or a grant's allocation is released in
    the same batch)."""
    together, alone, statements = _two_stores(engine, tmp_path, 4000, [])

    def shown(answers: list[object]) -> list[object]:
        return [type(a).__name__ if isinstance(a, Exception) else a for a in answers]

    async def queued() -> list[object]:
        return list(await asyncio.gather(*(
            together.write_unit(_grant_unit(together, i, *step))
            for i, step in enumerate(steps)), return_exceptions=True))

    async def one_by_one() -> list[object]:
        out: list[object] = []
        for i, step in enumerate(steps):
            try:
                out.append(await alone.write_unit(_grant_unit(alone, i, *step)))
            except Refused as exc:
                out.append(exc)
        return out

    try:
        answers = shown(asyncio.run(queued()))
        assert answers == shown(asyncio.run(one_by_one()))
        assert _rows(engine) == _rows(alone.engine)
        if len(steps) == 4 and all(release is None for _, release in steps):  # all fit
            assert statements.count("INSERT INTO allocations") == 1
            assert statements.count("UPDATE node_resources SET") == 1
    finally:
        together.close()
        alone.close()
