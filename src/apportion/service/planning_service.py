"""Capacity planning: utilization over a window and forecasts per group.

With every history sample (``service/history_service.py``) this service
records two more series per group and resource, for each grouping
(``resource``, ``facility``, ``type``):

- ``allocated``: the allocated amount, in base units;
- ``demand``: allocated plus what waiting jobs still ask for. A waiting job's
  amount is shared among the groups whose nodes it may use, in proportion to
  their capacity (``core.capacity.pending_by_group``).

``forecast`` reads those series back (5-minute rollups, then the raw samples
not rolled up yet) and hands each to ``core.forecast.forecast``, which picks
a model (seasonal Holt-Winters when the history holds two daily or weekly
cycles, EWMA or a linear trend otherwise), back-tests it and dates the
exhaustion against the group's current capacity. ``run_forever`` repeats the
per-facility forecast of allocated amounts every ``interval_s`` and hands the
exhaustion times to the alerts service (the ``forecast_exhaustion`` rule).

Grouped by node pool too (the ``pool`` label that the autoscaler's nodes
carry), the allocated amount is recorded so that ``pool_peaks`` can hand the
autoscaler the forecast peak of each pool over its look-ahead: a pool busy
every morning at nine is scaled up before nine, not after.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
import structlog

from apportion.core.alerts import ExhaustionForecast
from apportion.core.capacity import PendingDemand, pending_by_group, summarize
from apportion.core.forecast import INSUFFICIENT, Forecast, forecast, history_needed_s
from apportion.core.resources import format_quantity
from apportion.exceptions import InvalidInput
from apportion.service.alerts_service import AlertsService
from apportion.service.history_service import HistoryService, Row
from apportion.service.jobs import JobsService
from apportion.service.jobs.model import WAITING
from apportion.service.ledger_service import LedgerService
from apportion.store.schema import history_rollups, history_samples, history_series

log = structlog.get_logger(__name__)

GROUPINGS = ("resource", "facility", "type")
POOL_GROUPING = "pool"
"""Recorded beside ``GROUPINGS`` (nodes outside any pool left out), read by
``pool_peaks`` for the autoscaler."""
SERIES = ("allocated", "demand")
MAX_DAYS = 90
STEPS = (60, 300, 900, 1800, 3600, 7200, 10_800, 21_600, 43_200, 86_400)
"""Forecast steps; each divides a day, so the daily season stays whole."""
MAX_HISTORY_STEPS = 1000
MAX_FORECAST_STEPS = 400
"""The step grows with the window and horizon so one forecast stays in
milliseconds and one answer in a few hundred kilobytes."""

SeriesKey = tuple[str, str]
"""(group, resource)."""


@dataclass(frozen=True)
class PlanningSettings:
    """``[planning]`` of the server config: how often the forecasts behind the
    ``forecast_exhaustion`` alert are recomputed, and how much history they
    read."""

    interval_s: float = 600.0
    history_days: float = 35.0

    @classmethod
    def from_config(cls, raw: Mapping[str, Any],
                    interval_s: float | None = None) -> PlanningSettings:
        """``[planning]``, then ``interval_s`` (APPORTION_PLANNING_INTERVAL) over it."""
        if not isinstance(raw, Mapping):
            raise InvalidInput("planning: expected a table", field="planning")
        values: dict[str, float] = {}
        for key, value in raw.items():
            if key not in ("interval_s", "history_days"):
                raise InvalidInput(f"planning.{key}: unknown key; known: history_days, "
                                   "interval_s", field=f"planning.{key}")
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise InvalidInput(f"planning.{key}: a positive number", field=f"planning.{key}")
            values[key] = float(value)
        if interval_s is not None:
            values["interval_s"] = float(interval_s)
        settings = cls(**values)
        if not (math.isfinite(settings.interval_s) and settings.interval_s > 0):
            raise InvalidInput("planning.interval_s: a positive number of seconds",
                               field="planning.interval_s")
        if not 1 <= settings.history_days <= MAX_DAYS:
            raise InvalidInput(f"planning.history_days: from 1 to {MAX_DAYS}",
                               field="planning.history_days")
        return settings


def iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(round(t), UTC).isoformat().replace("+00:00", "Z")


def choose_step(history_s: float, horizon_s: float, finest_s: float) -> float:
    """The smallest step of ``STEPS`` (not finer than the history's own) that
    keeps the history and the horizon within their point budgets."""
    for step in STEPS:
        if step < finest_s:
            continue
        if history_s / step <= MAX_HISTORY_STEPS and horizon_s / step <= MAX_FORECAST_STEPS:
            return float(step)
    return float(STEPS[-1])


def _check_group_by(group_by: str) -> None:
    if group_by not in GROUPINGS:
        raise InvalidInput(f"group_by: {group_by!r} is not one of {', '.join(GROUPINGS)}",
                           field="group_by")


@dataclass
class PlanningService:
    ledger: LedgerService
    jobs: JobsService
    history: HistoryService
    alerts: AlertsService | None = None
    settings: PlanningSettings = field(default_factory=PlanningSettings)
    clock: Callable[[], float] = time.time
    last_alert_forecast_at: float | None = None
    _peaks: tuple[float, float, dict[str, dict[str, float]]] | None = field(
        default=None, repr=False)
    """(look-ahead, when, answer) of the last ``pool_peaks``."""

    def install(self) -> PlanningService:
        """Record the planner's series with every history sample."""
        if self.rows not in self.history.sources:
            self.history.sources.append(self.rows)
        return self

    # -- what is recorded ---------------------------------------------------------

    def _pending(self) -> list[PendingDemand]:
        out = []
        for live in list(self.jobs.live.values()):
            if live.state not in WAITING or live.ending:
                continue
            total: dict[str, int] = {}
            for unit in live.open_units():
                for resource, amount in unit.total.items():
                    total[resource] = total.get(resource, 0) + amount
            if total:
                out.append(PendingDemand(total, live.job.constraints.labels))
        return out

    def current(self, group_by: str) -> list[dict[str, Any]]:
        """Per group: nodes, and per resource total, allocated and pending (base units)."""
        ledger = self.ledger
        nodes = list(ledger.nodes.values())
        pairs = [(n, ledger.allocated(n.name)) for n in nodes]
        pending = pending_by_group(nodes, self._pending(), group_by)
        out = []
        for group in summarize(pairs, group_by):
            waiting = pending.get(group.group, {})
            resources = {r: (t.total, t.allocated, waiting.get(r, 0.0))
                         for r, t in sorted(group.resources.items()) if t.total > 0}
            out.append({"group": group.group, "nodes": group.nodes, "resources": resources})
        return out

    def rows(self) -> list[Row]:
        """The planner's history rows for one instant (called by the history loop)."""
        rows: list[Row] = []
        for group_by in (*GROUPINGS, POOL_GROUPING):
            for group in self.current(group_by):
                if group_by == POOL_GROUPING and group["group"] == "(none)":
                    continue  # the nodes of no pool: the whole cluster's series say it
                for resource, (_, allocated, pending) in group["resources"].items():
                    labels = {"group_by": group_by, "group": group["group"],
                              "resource": resource}
                    rows.append(("allocated", labels, float(allocated)))
                    rows.append(("demand", labels, float(allocated + pending)))
        return rows

    # -- reading history --------------------------------------------------------------

    def read(self, group_by: str, since: float) -> dict[str, dict[SeriesKey, list[tuple[float,
                                                                                        float]]]]:
        """Both planner series of ``group_by`` since ``since``: rollup means,
        then the raw samples after each series' newest rollup."""
        step = self.history.settings.retention.rollup_step_s
        out: dict[str, dict[SeriesKey, list[tuple[float, float]]]] = {m: {} for m in SERIES}
        with self.history.engine.connect() as conn:
            found = conn.execute(
                sa.select(history_series.c.id, history_series.c.metric, history_series.c.labels)
                .where(history_series.c.metric.in_(SERIES))).all()
            wanted: dict[int, tuple[str, SeriesKey]] = {}
            for series_id, metric, raw in found:
                labels = orjson.loads(raw) if isinstance(raw, str | bytes) else dict(raw)
                if labels.get("group_by") == group_by:
                    wanted[int(series_id)] = (metric, (str(labels.get("group", "")),
                                                       str(labels.get("resource", ""))))
            ids = list(wanted)
            newest: dict[int, float] = {}
            for chunk in _chunks(ids, 500):
                t = history_rollups
                for sid, start, mean in conn.execute(
                        sa.select(t.c.series_id, t.c.start, t.c.mean)
                        .where(t.c.series_id.in_(chunk), t.c.start >= since)
                        .order_by(t.c.series_id, t.c.start)):
                    metric, key = wanted[int(sid)]
                    out[metric].setdefault(key, []).append((float(start), float(mean)))
                    newest[int(sid)] = float(start)
            for chunk in _chunks(ids, 500):
                s = history_samples
                for sid, at, value in conn.execute(
                        sa.select(s.c.series_id, s.c.at, s.c.value)
                        .where(s.c.series_id.in_(chunk), s.c.at >= since)
                        .order_by(s.c.series_id, s.c.at)):
                    if float(at) < newest.get(int(sid), -math.inf) + step:
                        continue  # already in a rollup
                    metric, key = wanted[int(sid)]
                    out[metric].setdefault(key, []).append((float(at), float(value)))
        return out

    # -- answers -------------------------------------------------------------------------

    def utilization(self, group_by: str, window_s: float) -> dict[str, Any]:
        """Now and over the last ``window_s``: allocated, pending and demand
        per group and resource, with the window's mean and peak."""
        _check_group_by(group_by)
        horizon = self.history.settings.rollup_horizon_s
        if not (math.isfinite(window_s) and 0 < window_s <= horizon):
            raise InvalidInput(f"window_seconds: from 1 to {horizon:.0f} (the history kept)",
                               field="window_seconds")
        now = self.clock()
        past = self.read(group_by, now - window_s)
        groups = []
        for group in self.current(group_by):
            resources = {}
            for resource, (total, allocated, pending) in group["resources"].items():
                key = (group["group"], resource)
                entry: dict[str, Any] = {
                    "total": format_quantity(resource, total),
                    "allocated": format_quantity(resource, allocated),
                    "pending": format_quantity(resource, math.ceil(pending)),
                    "total_base": total, "allocated_base": allocated,
                    "pending_base": round(pending, 3),
                    "demand_base": round(allocated + pending, 3),
                    "allocated_share": round(allocated / total, 6),
                    "demand_share": round((allocated + pending) / total, 6),
                    "window": _window_stats(past["allocated"].get(key, []),
                                            past["demand"].get(key, []), total),
                }
                resources[resource] = entry
            groups.append({"group": group["group"], "nodes": group["nodes"],
                           "resources": resources})
        return {"group_by": group_by, "window_seconds": window_s, "now": iso(now),
                "groups": groups}

    def forecast(self, *, days: float, group_by: str, history_days: float | None = None,
                 group: str | None = None, resource: str | None = None,
                 points: bool = True) -> dict[str, Any]:
        """Per group and resource, the forecast of the allocated amount and of
        demand ``days`` ahead, with intervals, exhaustion, model and back-test."""
        _check_group_by(group_by)
        if not (math.isfinite(days) and 1 <= days <= MAX_DAYS):
            raise InvalidInput(f"days: from 1 to {MAX_DAYS} (got {days:g})", field="days")
        history_days = self.settings.history_days if history_days is None else history_days
        if not (math.isfinite(history_days) and 1 <= history_days <= MAX_DAYS):
            raise InvalidInput(f"history_days: from 1 to {MAX_DAYS} (got {history_days:g})",
                               field="history_days")
        now = self.clock()
        horizon_s = days * 86_400.0
        history_s = min(history_days * 86_400.0, self.history.settings.rollup_horizon_s)
        step = choose_step(history_s, horizon_s, self.history.settings.interval_s)
        past = self.read(group_by, now - history_s)
        out = []
        started = time.perf_counter()
        for current in self.current(group_by):
            if group is not None and current["group"] != group:
                continue
            for name, (total, allocated, pending) in current["resources"].items():
                if resource is not None and name != resource:
                    continue
                key = (current["group"], name)
                entry: dict[str, Any] = {
                    "group": current["group"], "resource": name,
                    "capacity": format_quantity(name, total), "capacity_base": total,
                    "now": {"allocated_base": allocated, "demand_base": allocated + pending},
                }
                for metric in SERIES:
                    series = past[metric].get(key, [])
                    fc = forecast(series, horizon_s, step, float(total), now)
                    entry[metric] = render_forecast(fc, now, series if points else None,
                                                    points=points)
                out.append(entry)
        return {"group_by": group_by, "days": days, "history_days": history_days,
                "step_seconds": step, "now": iso(now), "generated_in_s":
                round(time.perf_counter() - started, 3), "forecasts": out}

    # -- the autoscaler's feed ---------------------------------------------------------

    def pool_peaks(self, lookahead_s: float) -> dict[str, dict[str, float]]:
        """Per pool and resource: the highest upper 80 % bound of the allocated
        amount (base units) forecast from now to ``lookahead_s`` ahead. A pool
        with too little history for a forecast is left out. Blocking (reads
        the history); recomputed at most once per ``settings.interval_s``."""
        now = self.clock()
        if (self._peaks is not None and self._peaks[0] == lookahead_s
                and 0 <= now - self._peaks[1] < self.settings.interval_s):
            return self._peaks[2]
        history_s = min(self.settings.history_days * 86_400.0,
                        self.history.settings.rollup_horizon_s)
        step = choose_step(history_s, lookahead_s, self.history.settings.interval_s)
        # At least one step ahead, or a look-ahead shorter than a step sees nothing.
        until = now + max(lookahead_s, step)
        out: dict[str, dict[str, float]] = {}
        for (pool, resource), series in self.read(POOL_GROUPING,
                                                  now - history_s)["allocated"].items():
            fc = forecast(series, until - now, step, None, now)
            ahead = [p.hi80 for p in fc.points if p.t <= until]
            if pool != "(none)" and fc.model != INSUFFICIENT and ahead:
                out.setdefault(pool, {})[resource] = max(ahead)
        self._peaks = (lookahead_s, now, out)
        return out

    # -- the alert feed -----------------------------------------------------------------

    def exhaustion_forecasts(self) -> list[ExhaustionForecast]:
        """Per facility and resource: when the allocated amount is forecast to
        reach capacity, within the alert horizon (None when it does not)."""
        horizon_s = 7 * 86_400.0
        if self.alerts is not None:
            horizon_s = self.alerts.settings.forecast_horizon_s
        days = min(MAX_DAYS, max(1.0, horizon_s / 86_400.0))
        answer = self.forecast(days=days, group_by="facility", points=False)
        now = self.clock()
        found = []
        for entry in answer["forecasts"]:
            at = entry["allocated"]["exhaustion_at_epoch"]
            found.append(ExhaustionForecast(entry["group"], entry["resource"],
                                            None if at is None else max(0.0, at - now)))
        return found

    async def update_alerts(self) -> list[ExhaustionForecast]:
        found = await asyncio.to_thread(self.exhaustion_forecasts)
        if self.alerts is not None:
            self.alerts.forecasts = found
        self.last_alert_forecast_at = self.clock()
        return found

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.interval_s)
            try:
                await self.update_alerts()
            except Exception as exc:
                log.warning("planning_failed", error=repr(exc))


def render_forecast(fc: Forecast, now: float, history: list[tuple[float, float]] | None, *,
                    points: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": fc.model,
        "seasonal": fc.seasonal,
        "reason": fc.reason,
        "backtest": None if fc.backtest is None else {
            "mape_percent": _round(fc.backtest.mape), "mase": _round(fc.backtest.mase),
            "holdout_points": fc.backtest.holdout_points},
        "history_points": fc.history_points,
        "history_needed_s": history_needed_s(fc),
        "exhaustion_at": iso(fc.exhaustion_at),
        "exhaustion_at_epoch": fc.exhaustion_at,
        "exhaustion_in_hours": None if fc.exhaustion_at is None
        else round(max(0.0, fc.exhaustion_at - now) / 3600.0, 2),
        "exhaustion_hi80_at": iso(fc.exhaustion_hi80_at),
        "end": None if not fc.points else {
            "t": iso(fc.points[-1].t), "mean": round(fc.points[-1].mean, 3),
            "lo80": round(fc.points[-1].lo80, 3), "hi80": round(fc.points[-1].hi80, 3),
            "lo95": round(fc.points[-1].lo95, 3), "hi95": round(fc.points[-1].hi95, 3)},
        "notes": list(fc.notes),
    }
    if points:
        body["columns"] = ["t", "mean", "lo80", "hi80", "lo95", "hi95"]
        body["points"] = [[round(v, 3) for v in p] for p in fc.points]
        body["history"] = _on_grid(history or [], fc.step_s)
    return body


def _on_grid(series: list[tuple[float, float]], step: float) -> list[list[float]]:
    """The history averaged per step (what the chart draws)."""
    if step <= 0:
        return []
    sums: dict[float, list[float]] = {}
    for t, v in series:
        if math.isfinite(v):
            bucket = sums.setdefault(math.floor(t / step) * step, [0.0, 0.0])
            bucket[0] += v
            bucket[1] += 1
    return [[t, round(s / n, 3)] for t, (s, n) in sorted(sums.items())]


def _window_stats(allocated: list[tuple[float, float]], demand: list[tuple[float, float]],
                  total: int) -> dict[str, Any]:
    def stats(values: list[float]) -> tuple[float | None, float | None]:
        if not values:
            return None, None
        return round(sum(values) / len(values), 3), round(max(values), 3)

    a_mean, a_peak = stats([v for _, v in allocated])
    d_mean, d_peak = stats([v for _, v in demand])

    def share(v: float | None) -> float | None:
        return None if v is None or total <= 0 else round(v / total, 6)

    return {"samples": len(allocated), "allocated_mean_base": a_mean,
            "allocated_peak_base": a_peak, "allocated_mean_share": share(a_mean),
            "allocated_peak_share": share(a_peak), "demand_mean_base": d_mean,
            "demand_peak_base": d_peak, "demand_peak_share": share(d_peak)}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _chunks(items: list[int], size: int) -> list[list[int]]:
    return [items[i:i + size] for i in range(0, len(items), size)]
