"""Shared fixtures: a real server on loopback (SQLite or PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A real ``apportion server`` process on the embedded SQLite store."""
    proc = ServerProcess(tmp_path).start()
    try:
        yield proc
    finally:
        proc.stop()
