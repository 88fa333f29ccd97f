"""Metric history: sample the cluster, keep it bounded, answer series with trends.

Every ``interval_s`` the server records, from its memory:

- ``utilization``: the allocated share (0-1) of each resource per node
  (labels ``node``, ``facility``, ``resource``), per facility (``facility``,
  ``resource``) and for the whole cluster (``resource``);
- ``queue_length``: jobs waiting per queue (``queue``);
- ``queue_wait_seconds``: how long the oldest waiting job of each queue has
  waited (``queue``).

Raw samples are kept ``raw_s`` (24 h), fixed-step rollups (5 min) for
``rollup_s`` (90 days); both are bounded per series by ``max_points`` too
(the horizon shrinks when the sampling interval would exceed it), so a store
never grows past a number of rows fixed by the number of series. The pure
parts (rollups, retention, trends) are ``core/history.py``.

Sample times are aligned to multiples of the interval and written with "on
conflict do nothing": several servers on one database record each instant
once.
"""

from __future__ import annotations

import asyncio
import math
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
import structlog
from sqlalchemy.dialects import postgresql, sqlite

from apportion.core.capacity import summarize
from apportion.core.history import (
    DEFAULT_RETENTION,
    MAX_SERIES_POINTS,
    Bucket,
    Retention,
    Sample,
    bucket_start,
    retention_from_config,
    rollup,
    series,
)
from apportion.core.scheduling import JobState
from apportion.exceptions import InvalidInput
from apportion.service.jobs import JobsService
from apportion.service.ledger_service import LedgerService
from apportion.store.schema import history_rollups, history_samples, history_series

log = structlog.get_logger(__name__)

METRICS = {
    "utilization": "allocated share of capacity, 0-1 (per node, facility or cluster, and "
                   "resource)",
    "queue_length": "jobs waiting to be placed, per queue",
    "queue_wait_seconds": "wait of the oldest waiting job, per queue",
    "allocated": "allocated amount in base units, per group (group_by facility, type or "
                 "resource) and resource; recorded for the capacity planner",
    "demand": "allocated plus pending amount in base units, per group and resource; recorded "
              "for the capacity planner",
}
LEVELS = ("node", "facility")
"""Utilization series labels, most specific first: a series is at the level of
its most specific label; a query asks for one level."""
SORT_KEYS = ("node", "facility", "queue", "resource")
DEFAULT_POINTS = 300
"""Points a series answer aims at when no step is given."""
MAX_SERIES = 1000
WAITING = (JobState.PENDING.value, JobState.PREEMPTED.value)

Row = tuple[str, dict[str, str], float]
"""A sample before it is stored: metric, labels, value."""


@dataclass(frozen=True)
class HistorySettings:
    interval_s: float = 60.0
    retention: Retention = DEFAULT_RETENTION

    def __post_init__(self) -> None:
        if not (math.isfinite(self.interval_s) and self.interval_s > 0):
            raise InvalidInput("history.interval_s: must be a positive number of seconds",
                               field="history.interval_s")

    @property
    def raw_horizon_s(self) -> float:
        return min(self.retention.raw_s, self.retention.max_points * self.interval_s)

    @property
    def rollup_horizon_s(self) -> float:
        r = self.retention
        return min(r.rollup_s, r.max_points * r.rollup_step_s)

    @classmethod
    def load(cls, config_file: Path | None = None,
             overrides: Mapping[str, float | int | None] | None = None) -> HistorySettings:
        """``[history]`` of the server config file (``interval_s``, ``raw_s``,
        ``rollup_step_s``, ``rollup_s``, ``max_points``), then ``overrides``
        of the same names (the ``APPORTION_HISTORY_*`` settings)."""
        table: dict[str, Any] = {}
        if config_file is not None and config_file.exists():
            try:
                data = tomllib.loads(config_file.read_text())
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise InvalidInput(f"{config_file}: cannot read: {exc}", field="config") from exc
            raw = data.get("history", {})
            if not isinstance(raw, dict):
                raise InvalidInput("history: expected a table", field="history")
            table.update(raw)
        table.update({k: v for k, v in (overrides or {}).items() if v is not None})
        interval = table.pop("interval_s", cls.interval_s)
        if isinstance(interval, bool) or not isinstance(interval, int | float):
            raise InvalidInput("history.interval_s: a number of seconds",
                               field="history.interval_s")
        return cls(float(interval), retention_from_config(table))


@dataclass
class HistoryService:
    """Records samples from the ledger and jobs in memory; answers series."""

    engine: sa.Engine
    ledger: LedgerService
    jobs: JobsService
    settings: HistorySettings = field(default_factory=HistorySettings)
    clock: Callable[[], float] = time.time
    _ids: dict[str, int] = field(default_factory=dict)
    _rolled_until: float | None = None
    samples_written: int = 0
    sources: list[Callable[[], list[Row]]] = field(default_factory=list)
    """More series recorded with every sample (the capacity planner's)."""

    # -- what is recorded ------------------------------------------------------

    def snapshot(self) -> list[Row]:
        """The current values of every recorded series (read from memory)."""
        ledger = self.ledger
        rows: list[Row] = []
        pairs = []
        for name in sorted(ledger.nodes):
            node = ledger.nodes[name]
            used = ledger.allocated(name)
            pairs.append((node, used))
            facility = node.labels.get("facility", "")
            for resource, total in sorted(node.resources.items()):
                if total > 0:
                    labels = {"node": name, "facility": facility, "resource": resource}
                    rows.append(("utilization", labels, used.get(resource, 0) / total))
        for group in summarize(pairs, "facility"):
            facility = "" if group.group == "(none)" else group.group
            for resource, totals in sorted(group.resources.items()):
                if totals.total > 0:
                    rows.append(("utilization", {"facility": facility, "resource": resource},
                                 totals.allocated_share))
        for group in summarize(pairs, "resource"):
            totals = group.resources[group.group]
            if totals.total > 0:
                rows.append(("utilization", {"resource": group.group}, totals.allocated_share))
        now = self.clock()
        waiting = dict.fromkeys(self.jobs.queues, 0)
        oldest: dict[str, float] = {}
        for live in list(self.jobs.live.values()):
            if live.row.state in WAITING:
                queue = live.row.queue
                waiting[queue] = waiting.get(queue, 0) + 1
                oldest[queue] = min(oldest.get(queue, now), live.row.submit_time)
        for queue in sorted(waiting):
            rows.append(("queue_length", {"queue": queue}, float(waiting[queue])))
            wait = max(0.0, now - oldest[queue]) if queue in oldest else 0.0
            rows.append(("queue_wait_seconds", {"queue": queue}, wait))
        for source in self.sources:
            rows.extend(source())
        return rows

    # -- the loop -------------------------------------------------------------

    async def run_forever(self) -> None:
        interval = self.settings.interval_s
        while True:
            now = self.clock()
            await asyncio.sleep(interval - now % interval + 0.001)
            try:
                await self.tick()
            except Exception as exc:
                log.warning("history_failed", error=repr(exc))

    async def tick(self) -> None:
        """Record one sample of everything, then roll up and prune when due."""
        now = self.clock()
        at = bucket_start(now, self.settings.interval_s)
        rows = self.snapshot()
        await asyncio.to_thread(self.write_samples, at, rows)
        await asyncio.to_thread(self.maintain, now)

    # -- the store ---------------------------------------------------------------

    def write_samples(self, at: float, rows: Sequence[Row]) -> int:
        """Store one instant's samples (once, whichever server writes first)."""
        if not rows:
            return 0
        with self.engine.begin() as conn:
            ids = self._series_ids(conn, [(m, labels) for m, labels, _ in rows])
            values = [{"series_id": ids[_key(m, labels)], "at": at, "value": float(v)}
                      for m, labels, v in rows if math.isfinite(v)]
            for chunk in _chunks(values, 2000):
                conn.execute(_insert_ignore(conn, history_samples, ["series_id", "at"]), chunk)
        self.samples_written += len(values)
        return len(values)

    def _series_ids(self, conn: sa.Connection,
                    wanted: Iterable[tuple[str, Mapping[str, str]]]) -> dict[str, int]:
        missing = {}
        for metric, labels in wanted:
            key = _key(metric, labels)
            if key not in self._ids:
                missing[key] = {"key": key, "metric": metric, "labels": dict(labels)}
        if missing:
            rows = list(missing.values())
            for chunk in _chunks(rows, 500):
                conn.execute(_insert_ignore(conn, history_series, ["key"]), chunk)
            for chunk in _chunks(list(missing), 500):
                found = conn.execute(sa.select(history_series.c.key, history_series.c.id)
                                     .where(history_series.c.key.in_(chunk)))
                self._ids.update({k: int(i) for k, i in found})
        return self._ids

    def maintain(self, now: float) -> int:
        """Roll up every step closed since the last rollup, then drop what is
        past retention; returns how many buckets were stored."""
        step = self.settings.retention.rollup_step_s
        until = bucket_start(now, step)
        with self.engine.connect() as conn:
            since = self._rollup_watermark(conn, now)
            if until <= since:
                return 0
            raw = conn.execute(
                sa.select(history_samples.c.series_id, history_samples.c.at,
                          history_samples.c.value)
                .where(history_samples.c.at >= since, history_samples.c.at < until)
            ).all()
        by_series: dict[int, list[Sample]] = {}
        for series_id, at, value in raw:
            by_series.setdefault(int(series_id), []).append(Sample("", {}, at, value))
        buckets = [{"series_id": sid, "start": b.start, "step": step, "min": b.min, "max": b.max,
                    "mean": b.mean, "count": b.count, "last": b.last}
                   for sid, samples in by_series.items() for b in rollup(samples, step)]
        with self.engine.begin() as conn:
            for chunk in _chunks(buckets, 2000):
                conn.execute(_insert_ignore(conn, history_rollups, ["series_id", "start"]),
                             chunk)
            conn.execute(sa.delete(history_samples)
                         .where(history_samples.c.at <= now - self.settings.raw_horizon_s))
            conn.execute(sa.delete(history_rollups).where(
                history_rollups.c.start + step <= now - self.settings.rollup_horizon_s))
        self._rolled_until = until
        return len(buckets)

    def _rollup_watermark(self, conn: sa.Connection, now: float) -> float:
        """Where the next rollup starts: after the newest stored bucket, and
        never before the oldest raw sample still kept."""
        if self._rolled_until is not None:
            return self._rolled_until
        step = self.settings.retention.rollup_step_s
        newest = conn.execute(sa.select(sa.func.max(history_rollups.c.start))).scalar()
        floor = bucket_start(now - self.settings.raw_horizon_s, step)
        return max(floor, float(newest) + step) if newest is not None else floor

    # -- answering ----------------------------------------------------------------

    def query(self, metric: str, filters: Mapping[str, str | None], *, window_s: float,
              step_s: float | None = None, limit: int = 100) -> dict[str, Any]:
        """The series of ``metric`` matching ``filters`` over the last
        ``window_s`` seconds, each with its trend.

        A filter value names a label's value; ``*`` matches any value. For
        ``utilization`` the filters also pick the level: with ``node`` the
        per-node series, else with ``facility`` the per-facility ones, else
        the cluster's."""
        if metric not in METRICS:
            known = ", ".join(sorted(METRICS))
            raise InvalidInput(f"metric: unknown metric {metric!r}; known: {known}",
                               field="metric")
        if not (math.isfinite(window_s) and window_s > 0):
            raise InvalidInput("window_seconds: must be a positive number", field="window_seconds")
        r = self.settings.retention
        if window_s > self.settings.rollup_horizon_s:
            raise InvalidInput(
                f"window_seconds: history is kept {self.settings.rollup_horizon_s:.0f} s; ask "
                "for a shorter window", field="window_seconds")
        now = self.clock()
        raw = window_s <= self.settings.raw_horizon_s
        finest = self.settings.interval_s if raw else r.rollup_step_s
        if step_s is None:
            step_s = finest * max(1, math.ceil(window_s / DEFAULT_POINTS / finest))
        elif not (math.isfinite(step_s) and step_s > 0):
            raise InvalidInput("step: must be a positive number of seconds", field="step")
        if window_s / step_s > MAX_SERIES_POINTS:
            need = math.ceil(window_s / MAX_SERIES_POINTS)
            raise InvalidInput(f"step: at least {need} s for a {window_s:.0f} s window",
                               field="step")
        step_s = max(step_s, finest)
        wanted = {k: v for k, v in filters.items() if v}
        with self.engine.connect() as conn:
            candidates = conn.execute(
                sa.select(history_series.c.id, history_series.c.labels)
                .where(history_series.c.metric == metric)).all()
            chosen = [(int(i), dict(_labels(labels))) for i, labels in candidates
                      if _matches(metric, _labels(labels), wanted)]
            chosen.sort(key=lambda c: tuple(c[1].get(k, "") for k in SORT_KEYS))
            truncated = len(chosen) > limit
            chosen = chosen[:limit]
            data = self._read(conn, [i for i, _ in chosen], now - window_s, raw)
        out = []
        for series_id, labels in chosen:
            s = series(data.get(series_id, []), window_s=window_s, step_s=step_s, now=now)
            out.append({
                "labels": labels,
                "points": [[p.at, p.value] for p in s.points],
                "last": s.points[-1].value if s.points else None,
                "trend": {"direction": s.trend.direction.value,
                          "slope_per_s": s.trend.slope_per_s,
                          "slope_per_hour": s.trend.slope_per_s * 3600.0,
                          "r2": s.trend.r2},
            })
        return {"metric": metric, "description": METRICS[metric], "window_seconds": window_s,
                "step": step_s, "source": "raw" if raw else "rollup", "now": now,
                "series": out, "truncated": truncated}

    def _read(self, conn: sa.Connection, ids: list[int], start: float,
              raw: bool) -> dict[int, list[Sample] | list[Bucket]]:
        found: dict[int, list[Any]] = {}
        for chunk in _chunks(ids, 500):
            if raw:
                t = history_samples
                rows = conn.execute(sa.select(t.c.series_id, t.c.at, t.c.value)
                                    .where(t.c.series_id.in_(chunk), t.c.at > start)
                                    .order_by(t.c.series_id, t.c.at))
                for sid, at, value in rows:
                    found.setdefault(int(sid), []).append(Sample("", {}, at, value))
            else:
                t = history_rollups
                buckets = conn.execute(
                    sa.select(t.c.series_id, t.c.start, t.c.min, t.c.max, t.c.mean, t.c.count,
                              t.c.last)
                    .where(t.c.series_id.in_(chunk), t.c.start >= start)
                    .order_by(t.c.series_id, t.c.start))
                for sid, b_start, low, high, mean, count, last in buckets:
                    found.setdefault(int(sid), []).append(
                        Bucket(b_start, low, high, mean, count, last))
        return found


def _key(metric: str, labels: Mapping[str, str]) -> str:
    return metric + orjson.dumps(dict(sorted(labels.items()))).decode()


def _labels(raw: Any) -> dict[str, str]:
    if isinstance(raw, str):
        raw = orjson.loads(raw)
    return {str(k): str(v) for k, v in dict(raw).items()}


def _matches(metric: str, labels: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    for key, value in wanted.items():
        if key not in labels or (value != "*" and labels[key] != value):
            return False
    if metric == "utilization":
        level = next((lv for lv in LEVELS if lv in wanted), None)
        have = next((lv for lv in LEVELS if lv in labels), None)
        return level == have
    return True


def _insert_ignore(conn: sa.Connection, table: sa.Table, keys: list[str]) -> Any:
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=keys)
    return sqlite.insert(table).on_conflict_do_nothing(index_elements=keys)


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]
