"""Fixtures for end-to-end tests with real agent processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.cluster import Cluster
from support import BACKENDS


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A server with fast node-loss timing; agents are added by the test."""
    c = Cluster(tmp_path).start()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(params=BACKENDS)
def backend_cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    """``cluster`` on each backend: the server's SQLite file, then a fresh
    PostgreSQL database (skipped, naming why, when there is none; failed
    under CI=true)."""
    url = None if request.param == "sqlite" else str(request.getfixturevalue("pg_url"))
    c = Cluster(tmp_path, database_url=url).start()
    try:
        yield c
    finally:
        c.close()
