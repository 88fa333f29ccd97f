"""A recorded capacity history with a known shape, for the planner's tests.

``ramp(h)``: hourly gpu allocation of facility ``tx`` (8 gpus), ``h`` hours
from now: 5 now, +0.01 an hour, a daily swing of ±2. Noise-free, so a
daily Holt-Winters fits it exactly; the mean first reaches 8 at h = 101.53.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import sqlalchemy as sa

from apportion.core.ledger import Ledger
from apportion.service.history_service import HistoryService, HistorySettings
from apportion.store.database import create_engine, migrate
from apportion.store.schema import history_rollups, history_series

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
