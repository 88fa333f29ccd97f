"""Fixtures for end-to-end tests with real agent processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.cluster import Cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A server with fast node-loss timing; agents are added by the test."""
    c = Cluster(tmp_path).start()
    try:
        yield c
    finally:
        c.close()
