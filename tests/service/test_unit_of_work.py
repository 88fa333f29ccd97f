"""The unit of work (``service/unit_of_work.py``): events carry their
server and time, a unit commits whole or not at all, a server follows only
the others' events, and ``Tx`` refuses what the stored ledger refuses."""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa

from apportion.core.model import Allocation, AllocationState, Node, ReleaseReason
from apportion.exceptions import Refused
from apportion.service.unit_of_work import Tx, UnitOfWork
from apportion.service.wiring import Services
from apportion.store.event_log import events_after


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
