"""Servers for the server tests: one per module (``shared``, with ``api``
on it) where tests can keep out of each other's way by naming their own
nodes, one per module and backend (``backend_shared``, SQLite then
PostgreSQL) for the modules whose API must behave alike on both, a fresh
one per test (``server`` from ``tests/conftest.py``, with ``fresh_api``)
where they count the whole cluster, ``serve`` for a fresh one with its own
settings (and ``backend_url``'s database), and ``engine`` for services
tested in process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from apportion.store.database import create_engine, migrate
from server.helpers import Serve
from support import BACKENDS, ServerProcess, drop_postgres_database, postgres_database


@pytest.fixture(scope="module")
def shared(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """One server for the module: a start costs seconds on a busy machine."""
    name = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    proc = ServerProcess(tmp_path_factory.mktemp(name)).start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module", params=BACKENDS)
def backend_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """Each backend in turn, for the module: None (a server's own SQLite
    file) or a fresh PostgreSQL database, dropped after the module. Without
    PostgreSQL its tests skip, naming why; under CI=true they fail."""
    if request.param == "sqlite":
        yield None
        return
    url, name = postgres_database()
    try:
        yield url
    finally:
        drop_postgres_database(name)


@pytest.fixture(scope="module")
def backend_shared(
    request: pytest.FixtureRequest,
    backend_url: str | None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerProcess]:
    """One server per module and backend, with the module's ``SERVER_ENV``:
    a start costs seconds, and the module's tests run once on each store."""
    name = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    env = dict(getattr(request.module, "SERVER_ENV", {}))
    proc = ServerProcess(
        tmp_path_factory.mktemp(name), database_url=backend_url, extra_env=env
    ).start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def api(shared: ServerProcess) -> Iterator[httpx.Client]:
    """An admin client of the module's server."""
    with shared.client() as client:
        yield client


@pytest.fixture
def fresh_api(server: ServerProcess) -> Iterator[httpx.Client]:
    """An admin client of a server of the test's own."""
    with server.client() as client:
        yield client


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    """Start a server in the test's directory with ``extra_env`` (on
    ``database_url``, if given); each is stopped when the test ends."""
    started: list[ServerProcess] = []

    def start(
        extra_env: dict[str, str] | None = None, database_url: str | None = None
    ) -> ServerProcess:
        proc = ServerProcess(tmp_path, database_url=database_url, extra_env=dict(extra_env or {}))
        started.append(proc)
        return proc.start()

    try:
        yield start
    finally:
        for proc in started:
            proc.stop()


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    """A migrated SQLite store for a service tested without a server."""
    engine = create_engine(f"sqlite:///{tmp_path / 'apportion.db'}", sqlite_synchronous="OFF")
    migrate(engine)
    try:
        yield engine
    finally:
        engine.dispose()
