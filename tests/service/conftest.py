"""Services built the way a server builds them (``service/wiring.py``), on a
real SQLite store of the test's own, with no loop running: a test drives
them itself (``asyncio.run``) and sees every step. Bare engines too
(``engine``, ``sqlite_engine``), for the tests of one piece over the store."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from apportion.core.scheduling import Job
from apportion.service.jobs.cache import JobCache
from apportion.service.jobs.scheduling import Scheduler
from apportion.service.settings import Settings
from apportion.service.wiring import Services, build
from apportion.store.database import create_engine, migrate
from support import drop_postgres_database, postgres_database


@pytest.fixture
def settings_given() -> dict[str, Any]:
    """Settings a module's services are built with (override it there)."""
    return {}


@pytest.fixture
def services(tmp_path: Path, settings_given: dict[str, Any]) -> Iterator[Services]:
    # Named here, so that an APPORTION_* variable of the shell cannot point
    # the test at another database or give it an admin token.
    built = build(
        Settings(
            data_dir=tmp_path,
            database_url=None,
            admin_token=None,
            config_file=None,
            **settings_given,
        )
    )
    try:
        yield built
    finally:
        built.uow.close()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Callable[..., Services]]:
    """Builds servers as ``wiring.build`` does, several on one store when the
    test asks (``database_url``: None for the SQLite file under tmp_path;
    ``given``: more settings, a ``config_file`` say); closes them all at the end."""
    built: list[Services] = []

    def make(server_id: str, database_url: str | None = None, **given: Any) -> Services:
        named: dict[str, Any] = {"admin_token": None, "config_file": None, "providers_file": None}
        named.update(given)
        server = build(
            Settings(data_dir=tmp_path, database_url=database_url, server_id=server_id, **named)
        )
        built.append(server)
        return server

    try:
        yield make
    finally:
        for server in built:
            server.uow.close()


@pytest.fixture(scope="session")
def _dropper() -> Iterator[Callable[[str], None]]:
    """Drops databases in the background, and waits for them at the end of
    the session (a failed drop fails there)."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pg-drop")
    drops: list[Future[None]] = []
    try:
        yield lambda name: drops.append(pool.submit(drop_postgres_database, name))
    finally:
        pool.shutdown(wait=True)
        for drop in drops:
            drop.result()


@pytest.fixture
def pg_url(_dropper: Callable[[str], None]) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, as ``tests/conftest.py``
    makes it, but dropped in the background: a drop waits for a checkpoint,
    about a second, longer than most tests here take."""
    url, name = postgres_database()
    try:
        yield url
    finally:
        _dropper(name)


@pytest.fixture
def engine_setup() -> Callable[[sa.Engine], None]:
    """What ``engine`` and ``sqlite_engine`` make ready before the test: the
    store's migrations (override it in a module that wants its own tables)."""
    return migrate


def _engine(url: str, setup: Callable[[sa.Engine], None]) -> Iterator[sa.Engine]:
    engine = create_engine(url, sqlite_synchronous="OFF")
    setup(engine)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def engine(store_url: str, engine_setup: Callable[[sa.Engine], None]) -> Iterator[sa.Engine]:
    """A bare engine (no services) on a fresh store of each backend, made
    ready by ``engine_setup``."""
    yield from _engine(store_url, engine_setup)


@pytest.fixture
def sqlite_engine(
    tmp_path: Path, engine_setup: Callable[[sa.Engine], None]
) -> Iterator[sa.Engine]:
    """The same on SQLite alone."""
    yield from _engine(f"sqlite:///{tmp_path / 'engine.db'}", engine_setup)


@pytest.fixture(autouse=True)
def cache_indexes_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every change to a job cache, in every test here, is followed by a
    check that its kept indexes (``open``, ``stopping``) say what the plain
    computation from its jobs says, and every cycle's waiting units are the
    plain ones: the indexes are what the leader's cycle reads."""
    for name in ("apply", "_fill", "_drop"):
        monkeypatch.setattr(JobCache, name, _checked(getattr(JobCache, name)))
    pending = Scheduler._pending

    def plain_pending(self: Scheduler, now: float) -> list[Job]:
        got = pending(self, now)
        plain = [u for lj in self.cache.jobs.values() if lj.not_before <= now
                 for u in lj._open_units() if u.id not in self.switches]
        assert sorted(u.id for u in got) == sorted(u.id for u in plain)
        assert {u.id: u for u in got} == {u.id: u for u in plain}
        return got

    monkeypatch.setattr(Scheduler, "_pending", plain_pending)


def _checked(method: Callable[..., Any]) -> Callable[..., Any]:
    def run(cache: JobCache, *args: Any, **kwargs: Any) -> Any:
        out = method(cache, *args, **kwargs)
        plain_open = {lj.id: lj._open_units() for lj in cache.jobs.values()}
        assert cache.open == {i: u for i, u in plain_open.items()
                              if u and not cache.jobs[i].row.not_before}
        assert set(cache.deferred) == {i for i, u in plain_open.items()
                                       if u and cache.jobs[i].row.not_before}
        assert all(cache.deferred[i] is cache.jobs[i] for i in cache.deferred)
        assert all(lj.open == lj._open_units() for lj in cache.jobs.values())
        stopping = {t.allocation_id for lj in cache.jobs.values() for t in lj.active()
                    if t.stop_state}
        assert cache.stopping() == stopping
        return out

    return run
