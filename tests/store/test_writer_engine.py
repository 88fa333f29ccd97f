"""``writer_engine`` on SQLite: the group committer's own connection (its
page cache survives between batches), set up like the shared pool's."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from apportion.store.database import create_engine, migrate, writer_engine


@pytest.mark.parametrize("synchronous", ["OFF", "NORMAL", "FULL"])
def test_a_sqlite_file_gets_one_writer_connection_set_up_like_the_pool(
        tmp_path: Path, synchronous: str) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'a.db'}", sqlite_synchronous=synchronous)
    migrate(engine)
    writer = writer_engine(engine)
    try:
        assert writer is not engine
        seen = set()
        for _ in range(3):
            with writer.connect() as conn:
                seen.add(id(conn.connection.dbapi_connection))
                pragmas = [conn.exec_driver_sql(f"PRAGMA {p}").scalar_one()
                           for p in ("journal_mode", "synchronous", "foreign_keys")]
        assert len(seen) == 1  # the same connection, batch after batch
        assert pragmas == ["wal", ["OFF", "NORMAL", "FULL"].index(synchronous), 1]
        with writer.begin() as conn:  # its own BEGIN, as the pool's: savepoints work
            conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
            with conn.begin_nested():
                conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT x FROM t").scalar_one() == 1
    finally:
        writer.dispose()
        engine.dispose()


def test_a_database_in_memory_is_written_through_its_own_engine() -> None:
    engine = sa.create_engine("sqlite://")
    assert writer_engine(engine) is engine
    engine.dispose()


def test_a_sqlite_transaction_begins_on_the_driver_and_rolls_back_whole(tmp_path: Path) -> None:
    """BEGIN goes to the sqlite3 connection itself (SQLAlchemy executes
    nothing for it), and still opens the transaction a rollback undoes."""
    engine = create_engine(f"sqlite:///{tmp_path / 'a.db'}", sqlite_synchronous="OFF")
    migrate(engine)
    seen: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda _c, _k, sql, *_: seen.append(sql))
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        with engine.connect() as conn:
            tx = conn.begin()
            conn.exec_driver_sql("INSERT INTO t VALUES (1)")
            assert conn.connection.dbapi_connection.in_transaction  # type: ignore[union-attr]
            tx.rollback()
            assert conn.exec_driver_sql("SELECT count(*) FROM t").scalar_one() == 0
        assert seen == ["CREATE TABLE t (x INTEGER)", "INSERT INTO t VALUES (1)",
                        "SELECT count(*) FROM t"]
    finally:
        engine.dispose()


def test_a_begin_the_driver_refuses_is_raised_as_sqlalchemys_error(tmp_path: Path) -> None:
    """The committer retries on SQLAlchemy's OperationalError: a BEGIN that
    fails on the driver (here: a transaction already open there) is one."""
    engine = create_engine(f"sqlite:///{tmp_path / 'a.db'}", sqlite_synchronous="OFF")
    try:
        with engine.connect() as conn:
            conn.connection.dbapi_connection.execute("BEGIN")  # type: ignore[union-attr]
            with pytest.raises(sa.exc.OperationalError, match="within a transaction"):
                conn.begin()
    finally:
        engine.dispose()
