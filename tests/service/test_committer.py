"""Group commit (``service/committer.py``): writes queued together share one
transaction, answered only once it committed; a unit the store refuses is
rolled back alone inside the shared transaction; a batch the store
disagrees with is written again one payload at a time; writes still queued
at shutdown are refused, not lost. On SQLite (statements on the loop) and
PostgreSQL (the whole transaction in a worker thread, as for a SQLite batch
of several writes). The batch writers
are the test's own, passed in as ``UnitOfWork`` passes the ledger's."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from apportion.exceptions import Refused, StoreUnavailable
from apportion.service.committer import BatchConflict, GroupCommitter


@pytest.fixture
def engine_setup() -> Callable[[sa.Engine], None]:
    """The test's own table, on each backend (``engine``: where the two ways
    of running a transaction differ) and on SQLite (``sqlite_engine``)."""

    def setup(engine: sa.Engine) -> None:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE t (v INTEGER NOT NULL UNIQUE)")

    return setup


def _insert(conn: sa.Connection, v: int) -> int:
    conn.exec_driver_sql(f"INSERT INTO t (v) VALUES ({int(v)})")
    return v


def _stored(engine: sa.Engine) -> list[int]:
    with engine.connect() as conn:
        return [v for (v,) in conn.exec_driver_sql("SELECT v FROM t ORDER BY v")]


def test_payloads_queued_together_share_one_transaction(engine: sa.Engine) -> None:
    calls: list[list[int]] = []

    def write_batch(conn: sa.Connection, payloads: list[Any]) -> list[Any]:
        calls.append(list(payloads))
        return [_insert(conn, v) * 10 for v in payloads]

    async def scenario() -> list[Any]:
        committer = GroupCommitter(engine, write_batch)
        futures = [committer.submit(v) for v in range(1, 6)]
        answers = await asyncio.gather(*futures)
        assert (committer.batches, committer.writes) == (1, 5)
        return answers

    assert asyncio.run(scenario()) == [10, 20, 30, 40, 50]
    assert calls == [[1, 2, 3, 4, 5]]
    assert _stored(engine) == [1, 2, 3, 4, 5]


def test_a_refused_unit_is_rolled_back_alone_and_the_others_commit(engine: sa.Engine) -> None:
    def refused(conn: sa.Connection) -> int:
        _insert(conn, 2)
        raise Refused("the job is no longer waiting")

    async def scenario() -> list[Any]:
        committer = GroupCommitter(engine, lambda conn, payloads: [])
        futures = [
            committer.submit_unit(lambda c: _insert(c, 1)),
            committer.submit_unit(refused),
            committer.submit_unit(lambda c: _insert(c, 1)),  # a constraint says no
            committer.submit_unit(lambda c: _insert(c, 3), heavy=True),
        ]
        answers = await asyncio.gather(*futures, return_exceptions=True)
        assert committer.batches == 1
        return answers

    first, second, third, fourth = asyncio.run(scenario())
    assert (first, fourth) == (1, 3)
    assert isinstance(second, Refused) and second.message == "the job is no longer waiting"
    assert isinstance(third, Refused)
    assert third.message.startswith("the store refused the change:")
    assert _stored(engine) == [1, 3]


def _savepoints(engine: sa.Engine) -> list[str]:
    """Every SAVEPOINT the engine sends from now on."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("SAVEPOINT"):
            seen.append(statement)

    sa.event.listen(engine, "before_cursor_execute", record)
    return seen


def test_units_that_all_commit_run_once_without_savepoints(engine: sa.Engine) -> None:
    savepoints = _savepoints(engine)
    runs: list[int] = []

    def unit(v: int) -> Callable[[sa.Connection], int]:
        def write(conn: sa.Connection) -> int:
            runs.append(v)
            return _insert(conn, v)
        return write

    async def scenario() -> list[Any]:
        committer = GroupCommitter(engine, lambda conn, payloads: [])
        answers = await asyncio.gather(*(committer.submit_unit(unit(v)) for v in (1, 2, 3)))
        assert committer.batches == 1
        return answers

    assert asyncio.run(scenario()) == [1, 2, 3]
    assert (runs, savepoints) == ([1, 2, 3], [])
    assert _stored(engine) == [1, 2, 3]


def test_a_refused_unit_sends_its_neighbours_round_again_each_in_a_savepoint(
        engine: sa.Engine) -> None:
    """The first pass is rolled back whole, what the refused unit wrote too;
    the second runs every unit again inside its own savepoint."""
    savepoints = _savepoints(engine)
    runs: list[str] = []

    def good(conn: sa.Connection) -> int:
        runs.append("good")
        return _insert(conn, 7)

    def refused(conn: sa.Connection) -> int:
        runs.append("refused")
        _insert(conn, 8)
        raise Refused("the task has ended")

    async def scenario() -> list[Any]:
        committer = GroupCommitter(engine, lambda conn, payloads: [])
        return await asyncio.gather(committer.submit_unit(good), committer.submit_unit(refused),
                                    return_exceptions=True)

    first, second = asyncio.run(scenario())
    assert first == 7 and isinstance(second, Refused)
    assert runs == ["good", "refused", "good", "refused"]
    assert len(savepoints) == 2
    assert _stored(engine) == [7]


def test_a_unit_alone_in_its_transaction_is_refused_whole(engine: sa.Engine) -> None:
    """A lone unit runs without a savepoint: a refusal or a constraint rolls
    back the whole transaction, and what it wrote before is not kept."""

    def refused(conn: sa.Connection) -> int:
        _insert(conn, 5)
        raise Refused("the job is no longer waiting")

    def duplicate(conn: sa.Connection) -> int:
        _insert(conn, 6)
        return _insert(conn, 1)

    async def one_at_a_time() -> list[Any]:
        committer = GroupCommitter(engine, lambda conn, payloads: [])
        answers: list[Any] = [await committer.submit_unit(lambda c: _insert(c, 1))]
        for write in (refused, duplicate):
            try:
                answers.append(await committer.submit_unit(write))
            except Refused as exc:
                answers.append(exc.message)
        answers.append(await committer.submit_unit(lambda c: _insert(c, 2)))
        return answers

    first, second, third, fourth = asyncio.run(one_at_a_time())
    assert (first, second, fourth) == (1, "the job is no longer waiting", 2)
    assert third.startswith("the store refused the change:")
    assert _stored(engine) == [1, 2]


def test_sqlite_commits_on_the_loop_while_commits_are_fast_else_in_a_thread(
    sqlite_engine: sa.Engine,
) -> None:
    committed_on: list[int] = []
    sa.event.listen(sqlite_engine, "commit",
                    lambda conn: committed_on.append(threading.get_ident()))

    async def scenario() -> int:
        committer = GroupCommitter(sqlite_engine, lambda conn, payloads: [])
        await committer.submit_unit(lambda c: _insert(c, 1))
        committer.commit_s = 0.05  # as after a slow fsync
        await committer.submit_unit(lambda c: _insert(c, 2))
        return threading.get_ident()

    loop_thread = asyncio.run(scenario())
    assert committed_on[0] == loop_thread
    assert committed_on[1] != loop_thread
    assert _stored(sqlite_engine) == [1, 2]


def test_a_sqlite_batch_of_several_writes_runs_off_the_loop_and_a_lone_one_on_it(
    sqlite_engine: sa.Engine,
) -> None:
    written_on: list[tuple[int, int]] = []

    def write_batch(conn: sa.Connection, payloads: list[Any]) -> list[Any]:
        written_on.append((len(payloads), threading.get_ident()))
        return [_insert(conn, v) for v in payloads]

    async def scenario() -> int:
        committer = GroupCommitter(sqlite_engine, write_batch)
        await committer.submit(1)
        await asyncio.gather(*[committer.submit(v) for v in (2, 3, 4)])
        return threading.get_ident()

    loop_thread = asyncio.run(scenario())
    assert written_on[0] == (1, loop_thread)
    assert written_on[1][0] == 3 and written_on[1][1] != loop_thread
    assert _stored(sqlite_engine) == [1, 2, 3, 4]


def test_a_batch_the_store_disagrees_with_is_written_one_payload_at_a_time(
    sqlite_engine: sa.Engine,
) -> None:
    def write_batch(conn: sa.Connection, payloads: list[Any]) -> list[Any]:
        for v in payloads:
            _insert(conn, v)
        raise BatchConflict  # as if another server had written first

    def write_each(conn: sa.Connection, payloads: list[Any]) -> list[Any]:
        out: list[Any] = []
        for v in payloads:
            if v == 2:
                out.append(Refused("2 is taken"))
                continue
            out.append(_insert(conn, v))
        return out

    async def scenario() -> list[Any]:
        committer = GroupCommitter(sqlite_engine, write_batch, write_each=write_each)
        return await asyncio.gather(
            *(committer.submit(v) for v in (1, 2, 3)), return_exceptions=True
        )

    one, two, three = asyncio.run(scenario())
    assert (one, three) == (1, 3)
    assert isinstance(two, Refused) and two.message == "2 is taken"
    assert _stored(sqlite_engine) == [1, 3]  # nothing of the first attempt stayed


def test_a_write_that_fails_oddly_is_answered_store_unavailable(sqlite_engine: sa.Engine) -> None:
    def broken(conn: sa.Connection) -> None:
        _insert(conn, 7)
        raise ValueError("a bug")

    async def scenario() -> BaseException:
        committer = GroupCommitter(sqlite_engine, lambda conn, payloads: [])
        with pytest.raises(StoreUnavailable) as caught:
            await committer.submit_alone(broken)
        assert await committer.submit_alone(lambda c: _insert(c, 8)) == 8
        return caught.value

    failure = asyncio.run(scenario())
    assert str(failure.message) == "the store refused the write: a bug"
    assert _stored(sqlite_engine) == [8]


def test_writes_still_queued_at_shutdown_are_refused_not_lost(sqlite_engine: sa.Engine) -> None:
    async def scenario() -> None:
        committer = GroupCommitter(sqlite_engine, lambda conn, payloads: [])
        queued = committer.submit_alone(lambda c: _insert(c, 1))
        committer.close()  # before the drain task ran
        with pytest.raises(StoreUnavailable, match="the server is shutting down"):
            await queued

    asyncio.run(scenario())
    assert _stored(sqlite_engine) == []
