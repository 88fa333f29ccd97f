"""The store's tests run on both backends: ``store_url`` is a fresh, empty
database of each (PostgreSQL ones carry the ``postgres`` mark)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'apportion.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url
