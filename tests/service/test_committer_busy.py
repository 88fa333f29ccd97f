"""A write that meets another connection's commit on SQLite waits for it.

SQLite answers "database is locked" at once, without its busy timeout, when
a transaction that has read wants to write while another connection holds
the write lock (a server's leadership and history loops write on their own
connections). Found by tests/cli/test_every_command.py: two log pushes in a
row, the second refused with a 503 after three retries within 3 ms.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from apportion.service.committer import GroupCommitter
from apportion.store.database import create_engine


def test_a_unit_that_meets_another_writer_is_written_once_it_commits(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'busy.db'}"
    engine = create_engine(url, sqlite_synchronous="OFF")
    other = create_engine(url, sqlite_synchronous="OFF")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (v INTEGER NOT NULL)")
    holder = other.connect()
    holder.exec_driver_sql("INSERT INTO t (v) VALUES (1)")  # holds the write lock
    failures: list[str] = []

    async def main() -> Any:
        loop = asyncio.get_running_loop()

        def on_error(context: Any) -> None:
            # The other writer commits as soon as the committer lets the loop
            # run: a retry that does not wait for it meets the same lock.
            failures.append(str(context.original_exception))
            if len(failures) == 1:
                loop.call_soon(holder.commit)

        sa.event.listen(engine, "handle_error", on_error)

        def unit(conn: sa.Connection) -> int:
            # Read, then write: as the task files' log append does.
            seen = conn.execute(sa.text("SELECT count(*) FROM t")).scalar_one()
            conn.execute(sa.text("INSERT INTO t (v) VALUES (2)"))
            return int(seen)

        committer = GroupCommitter(engine, lambda conn, payloads: [])
        return await committer.submit_unit(unit)

    try:
        assert asyncio.run(main()) == 1
        assert failures == ["database is locked"]
        with engine.connect() as conn:
            assert list(conn.execute(sa.text("SELECT v FROM t ORDER BY v")).scalars()) == [1, 2]
    finally:
        holder.close()
        other.dispose()
        engine.dispose()
