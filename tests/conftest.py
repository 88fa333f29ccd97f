"""Shared fixtures: a real server on loopback (SQLite or PostgreSQL)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from apportion.agent.isolation import FALLBACK_SANDBOXES
from support import ServerProcess, drop_postgres_database, postgres_database


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test."""
    url, name = postgres_database()
    try:
        yield url
    finally:
        drop_postgres_database(name)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database of each backend (PostgreSQL ones carry the
    ``postgres`` mark): for tests where the store's behaviour matters."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'apportion.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def fallback_sandboxes() -> Iterator[Path]:
    """For tests whose agents run as root with a work directory tasks cannot
    reach (so their sandboxes go to /var/lib/apportion/sandbox/<node>):
    removes what the test added there, and the directory if it made it."""
    missing = [p for p in [*reversed(FALLBACK_SANDBOXES.parents), FALLBACK_SANDBOXES]
               if not p.exists()]
    made = missing[0] if missing else None
    before = set() if made else set(FALLBACK_SANDBOXES.iterdir())
    try:
        yield FALLBACK_SANDBOXES
    finally:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        elif FALLBACK_SANDBOXES.exists():
            for added in set(FALLBACK_SANDBOXES.iterdir()) - before:
                shutil.rmtree(added, ignore_errors=True)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A real ``apportion server`` process on the embedded SQLite store."""
    proc = ServerProcess(tmp_path).start()
    try:
        yield proc
    finally:
        proc.stop()
