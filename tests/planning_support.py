"""A recorded capacity history with a known shape, for the planner's tests.

``ramp(h)``: hourly gpu allocation of facility ``tx`` (8 gpus), ``h`` hours
from now: 5 now, +0.01 an hour, a daily swing of ±2. Noise-free, so a
daily Holt-Winters fits it exactly; the mean first reaches 8 at h = 101.53.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import httpx
import sqlalchemy as sa

from apportion.core.ledger import Ledger
from apportion.service.history_service import HistoryService, HistorySettings
from apportion.store.database import create_engine, migrate
from apportion.store.schema import history_rollups, history_samples, history_series
from e2e.cluster import wait_for
from support import ServerProcess

HOURS = 21 * 24
LABELS = {"group_by": "facility", "group": "tx", "resource": "gpu"}


def ramp(h: float) -> float:
    return 5 + 0.01 * h + 2 * math.sin(2 * math.pi * h / 24)


def seed_history(db: Path, now: float, hours: int = HOURS) -> None:
    """Store ``hours`` hourly 5-minute rollups of ``ramp`` (allocated and
    demand of tx/gpu) ending an hour before ``now``, as a server would have."""
    engine = create_engine(f"sqlite:///{db}", sqlite_synchronous="OFF")
    try:
        migrate(engine)
        jobs = SimpleNamespace(queues={}, live={})
        history = HistoryService(engine, SimpleNamespace(ledger=Ledger()),  # type: ignore[arg-type]
                                 jobs, HistorySettings())  # type: ignore[arg-type]
        # Creates the two series (with a raw sample an hour ago, inside the
        # last rollup: what is newer is the server's own).
        history.write_samples(now - 3600, [("allocated", LABELS, ramp(-1)),
                                           ("demand", LABELS, ramp(-1))])
        with engine.begin() as conn:
            ids = [i for (i,) in conn.execute(
                sa.select(history_series.c.id).where(history_series.c.metric.in_(
                    ["allocated", "demand"])))]
            rows = [{"series_id": sid, "start": now + h * 3600, "step": 300.0,
                     "min": ramp(h), "max": ramp(h), "mean": ramp(h), "count": 1,
                     "last": ramp(h)}
                    for sid in ids for h in range(-hours, 0)]
            conn.execute(sa.insert(history_rollups), rows)
    finally:
        engine.dispose()


def add_tx_gpus(api: httpx.Client, cpu: int, memory: str | None = None) -> None:
    """Node ``g1`` with 8 gpus, 5 of them allocated, in facility ``tx``.

    It joins ``tx`` (by a label change) only once its allocations are made,
    so every sample the server takes of tx/gpu reads 5: one sample of 0
    taken between the registration and the grants moves the forecast's
    crossing from ~4.2 to ~5.2 days."""
    resources: dict[str, object] = {"cpu": cpu, "gpu": 8}
    if memory is not None:
        resources["memory"] = memory
    r = api.post("/api/v1/nodes", json={"name": "g1", "resources": resources,
                                        "labels": {"type": "gpu"}})
    assert r.status_code == 201, r.text
    for gpus in (4, 1):
        r = api.post("/api/v1/allocations", json={"resources": {"gpu": gpus}, "node": "g1",
                                                  "owner": "ops"})
        assert r.status_code == 201, r.text
    r = api.put("/api/v1/nodes/g1", json={"labels": {"facility": "tx", "type": "gpu"}})
    assert r.status_code == 200, r.text


def start_seeded_server(make_dir: Callable[[], Path], extra_env: Callable[[Path], dict[str, str]],
                        prepare: Callable[[httpx.Client], None]) -> ServerProcess:
    """A server on a store seeded with ``ramp`` up to the current hour,
    samples every 0.5 s, ``prepare`` done through its API.

    Set up once more, on a new store, when the hour turned meanwhile: the
    seeded hour would then hold no sample of the server's and the series
    would lack ramp's latest point."""
    for _ in range(2):
        data = make_dir()
        hour = time.time() // 3600 * 3600
        seed_history(data / "apportion.db", hour)
        proc = ServerProcess(data, extra_env={**extra_env(data),
                                              "APPORTION_HISTORY_INTERVAL": "0.5"})
        proc.start(timeout=120)
        try:
            with proc.client() as api:
                prepare(api)
            prepared = time.time()
            _wait_for_own_sample(data / "apportion.db", prepared)
        except BaseException:
            proc.stop()
            raise
        if time.time() // 3600 * 3600 == hour:
            return proc
        proc.stop()
    raise AssertionError("the hour turned twice while one server started")


def _wait_for_own_sample(db: Path, after: float) -> None:
    """Until the server has stored a sample of tx/gpu allocation taken after
    ``after`` (what ``prepare`` made): before it, this hour's only point is
    the seeded one (``ramp(-1)``), and a loaded host can take seconds to get
    the sampler's turn."""
    engine = create_engine(f"sqlite:///{db}")
    query = sa.select(sa.func.count()).select_from(history_samples.join(
        history_series, history_samples.c.series_id == history_series.c.id)).where(
        history_series.c.metric == "allocated", history_samples.c.at > after)

    def sampled() -> bool:
        with engine.connect() as conn:
            return bool(conn.execute(query).scalar_one())

    try:
        wait_for("a sample of the server's own", sampled, 120.0, every=0.05)
    finally:
        engine.dispose()
