"""Opening the database: URL from settings, SQLite pragmas, migrations at start."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"


def normalize_url(url: str) -> str:
    """Let users write ``postgresql://``; we drive PostgreSQL with psycopg 3."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def sqlite_url(data_dir: Path) -> str:
    data_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{data_dir / 'apportion.db'}"


def _sqlite_pragmas(synchronous: str) -> Any:
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        # WAL lets readers run beside the single writer; FULL fsyncs each
        # commit so an acknowledged grant survives even a power cut; the busy
        # timeout covers a CLI command reading while the server writes.
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={synchronous}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=10000")
        # Temporary tables, indexes and statement journals in memory: this
        # build of SQLite keeps them in files (TEMP_STORE=1), and a batch of
        # grants created, wrote and unlinked one under /var/tmp on every
        # commit (five syscalls and a dozen page writes). They hold a
        # transaction's scratch data only; what is committed is unchanged.
        cur.execute("PRAGMA temp_store=MEMORY")
        cur.close()
        # Let SQLAlchemy, not the sqlite3 module, say when transactions begin:
        # the module's own implicit BEGIN breaks SAVEPOINT, which batches use.
        dbapi_conn.isolation_level = None

    return on_connect


def driver_error(conn: sa.Connection, statement: str, params: Any, exc: Exception
                 ) -> sa.exc.StatementError:
    """A driver error of a statement run on the driver's own connection or
    cursor, as SQLAlchemy would have raised it (``OperationalError``,
    ``IntegrityError``...): the committer retries on those."""
    return sa.exc.DBAPIError.instance(statement, params, exc, conn.dialect.loaded_dbapi.Error,
                                      dialect=conn.dialect)


def _begin(conn: sa.Connection) -> None:
    # On the driver's connection: through ``exec_driver_sql`` this one word
    # cost a third of an empty transaction (its execution context, cursor
    # and result), and the group committer begins one for every batch.
    # SQLAlchemy calls this outside its own error wrapping: a driver error
    # is raised as SQLAlchemy's here, as the committer's retry expects.
    try:
        conn.connection.dbapi_connection.execute("BEGIN")  # type: ignore[union-attr]
    except conn.dialect.loaded_dbapi.Error as exc:
        raise driver_error(conn, "BEGIN", (), exc) from exc


def create_engine(url: str, *, sqlite_synchronous: str = "FULL") -> sa.Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, pool_size=8, max_overflow=8)
        sa.event.listen(engine, "connect", _sqlite_pragmas(sqlite_synchronous))
        sa.event.listen(engine, "begin", _begin)
        return engine
    return sa.create_engine(url, pool_size=8, max_overflow=4, pool_pre_ping=True)


def writer_engine(engine: sa.Engine) -> sa.Engine:
    """The engine the group committer writes through.

    SQLite: one connection of its own (a database in memory: the same
    engine). SQLite drops a connection's page cache whenever another
    connection wrote since its last transaction; batches drawn in turn from
    the shared pool each began cold and read ~3 pages a grant back from the
    OS (pread) on the event loop. One writer connection keeps its cache.
    PostgreSQL: its own small pool without pre-ping, which would cost every
    batch one more round trip (a connection found broken fails its batch,
    is dropped, and the batch is tried again on a fresh one)."""
    if engine.dialect.name == "sqlite":
        if engine.url.database in (None, "", ":memory:"):
            return engine
        with engine.connect() as conn:
            synchronous = _SYNCHRONOUS[conn.exec_driver_sql("PRAGMA synchronous").scalar_one()]
        # Overflow only for a heavy unit's thread beside a batch (rare).
        writer = sa.create_engine(engine.url, pool_size=1, max_overflow=2)
        sa.event.listen(writer, "connect", _sqlite_pragmas(synchronous))
        sa.event.listen(writer, "begin", _begin)
        return writer
    return sa.create_engine(engine.url, pool_size=2, max_overflow=2, pool_pre_ping=False)


_SYNCHRONOUS = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


def migrate(engine: sa.Engine) -> None:
    """Bring the schema to the newest revision; safe with several servers
    starting together on one PostgreSQL (an advisory lock serializes them)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(7263514)"))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
