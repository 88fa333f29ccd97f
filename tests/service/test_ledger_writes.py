"""The ledger's batchable writes (``service/ledger_writes.py``): a batch of
grants and releases in a few statements with an event each, or
``BatchConflict`` when any row disagrees, and then the same ops one at a
time, in order, each with its own answer. On SQLite and PostgreSQL (the
batch statements differ by dialect)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from apportion.core.model import Allocation, AllocationState, Node, ReleaseReason
from apportion.service.committer import BatchConflict
from apportion.service.ledger_writes import GrantOp, ReleaseOp, write_batch, write_each
from apportion.service.wiring import Services
from apportion.store import ledger_tables as tables
from service.builders import stored_events


def _alloc(id: str, cpu: int) -> Allocation:
    return Allocation(id, "n1", {"cpu": cpu}, {}, "alice", {}, AllocationState.ACTIVE, 1.0)


def _events(s: Services) -> list[tuple[str, str]]:
    return [(e.kind, e.data["id"]) for e in stored_events(s) if e.kind.startswith("allocation.")]


def _setup(servers: Callable[..., Services], store_url: str) -> tuple[Services, Allocation]:
    s = servers("a", store_url)

    async def scenario() -> Allocation:
        await s.ledger.register_node(Node("n1", {"cpu": 4000}))
        return await s.ledger.grant({"cpu": 1000}, node="n1", owner="alice")

    return s, asyncio.run(scenario())


def test_a_batch_writes_every_op_with_its_event(
    servers: Callable[..., Services], store_url: str
) -> None:
    s, held = _setup(servers, store_url)
    done = held.released(ReleaseReason.COMPLETED, 2.0)
    ops = [GrantOp(_alloc("g1", 1000)), ReleaseOp(done), GrantOp(_alloc("g2", 2000))]
    with s.uow.engine.begin() as conn:
        answers = write_batch(s.uow.event_rows, conn, ops)
    assert answers == [True, done, True]
    with s.uow.engine.connect() as conn:
        assert sorted(a.id for a in tables.load_active_allocations(conn, ["n1"])) == ["g1", "g2"]
    assert _events(s)[1:] == [
        ("allocation.granted", "g1"),
        ("allocation.released", held.id),
        ("allocation.granted", "g2"),
    ]


def test_a_batch_the_store_disagrees_with_is_written_one_op_at_a_time(
    servers: Callable[..., Services], store_url: str
) -> None:
    s, held = _setup(servers, store_url)  # 1000 of 4000 held
    # Releases go first, yet 2000 + 3000 is over 4000: the batch cannot stand.
    ops = [
        GrantOp(_alloc("fits", 2000)),
        GrantOp(_alloc("too-big", 3000)),
        ReleaseOp(held.released(ReleaseReason.COMPLETED, 2.0)),
    ]
    with pytest.raises(BatchConflict), s.uow.engine.begin() as conn:
        write_batch(s.uow.event_rows, conn, ops)
    assert _events(s) == [("allocation.granted", held.id)]  # rolled back: nothing
    with s.uow.engine.begin() as conn:
        answers = write_each(s.uow.event_rows, conn, ops)
    assert answers[:2] == [True, False]
    assert (answers[2].id, answers[2].reason) == (held.id, ReleaseReason.COMPLETED)
    # Released again by someone later: answered as it was released first.
    with s.uow.engine.begin() as conn:
        [again] = write_each(
            s.uow.event_rows, conn, [ReleaseOp(held.released(ReleaseReason.CANCELLED, 3.0))]
        )
    assert (again.reason, again.released_at) == (ReleaseReason.COMPLETED, 2.0)
    assert _events(s) == [
        ("allocation.granted", held.id),
        ("allocation.granted", "fits"),
        ("allocation.released", held.id),
    ]
