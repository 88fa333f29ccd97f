"""Shared fixtures: a real server on loopback (SQLite or PostgreSQL)."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from apportion.agent.isolation import FALLBACK_SANDBOXES
from support import ServerProcess, drop_postgres_database, postgres_database

# APPORTION_NO_NATIVE=1 (the second pass of .ci/run) hides the compiled free
# index and the replays' kernels, so the core's imports fall back to the
# pure Python, as on a machine that could not build them
# (core/scheduling/fastindex.py, core/fastreplay.py).
if os.environ.get("APPORTION_NO_NATIVE") == "1":
    assert "apportion.core.scheduling.fastindex" not in sys.modules, "the index was chosen"
    assert "apportion.core.fastreplay" not in sys.modules, "the kernels were chosen"
    sys.modules["apportion.core.scheduling._freeindex_c"] = None  # type: ignore[assignment]
    sys.modules["apportion.core._replay_c"] = None  # type: ignore[assignment]

# pytest-xdist's workers start with COLUMNS=80 and LINES=24 in their
# environment, which a plain run has not: every CLI a test starts would then
# fold its output at 80 columns. Tests that want a width set it themselves.
for _size in ("COLUMNS", "LINES"):
    os.environ.pop(_size, None)

# Hypothesis's per-example deadline (200 ms) is a timing bound, and tests
# never fail on a timing: on a loaded CI machine a slow example is not a
# defect. (Tests that set their own ``@settings`` inherit this.)
settings.register_profile("apportion", deadline=None)
settings.load_profile("apportion")

# ./run mutate tests each mutant with `--hypothesis-profile=mutation`: a
# property test of hundreds of examples costs up to a minute per mutant, and a
# mutant its tests can catch at all is nearly always caught within the first
# few. Derandomized and without the example database, so a mutant's verdict is
# the same on every run. Not for the plain run: it would weaken the suite.
MUTATION_EXAMPLES = 10
MUTATION_STEPS = 20
settings.register_profile(
    "mutation", max_examples=MUTATION_EXAMPLES, stateful_step_count=MUTATION_STEPS,
    deadline=None, derandomize=True, database=None,
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under the mutation profile, cap the examples that tests ask for in
    their own ``@settings`` too: those override any profile."""
    if config.getoption("hypothesis_profile", None) != "mutation":
        return
    for item in items:
        test = getattr(getattr(item, "obj", None), "__func__", getattr(item, "obj", None))
        own = getattr(test, "_hypothesis_internal_use_settings", None)
        if own is not None:
            test._hypothesis_internal_use_settings = _capped(own)  # type: ignore[union-attr]
        machine = getattr(item, "cls", None)
        if isinstance(getattr(machine, "settings", None), settings):
            machine.settings = _capped(machine.settings)  # type: ignore[union-attr]


def _capped(own: settings) -> settings:
    return settings(
        own, max_examples=min(own.max_examples, MUTATION_EXAMPLES),
        stateful_step_count=min(own.stateful_step_count, MUTATION_STEPS),
        deadline=None, derandomize=True, database=None,
    )


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
