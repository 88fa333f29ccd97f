"""Forecast accuracy on utilization recorded from a simulated trace replay.

Issue 6 asks for the forecast's error on real-shaped history, not only on a
synthetic series. This replays a real trace through the core scheduler
(FIFO + EASY, the same code the server runs), records the hourly mean of
what was allocated (processors for SWF, GPUs for Philly) and of demand
(allocated + pending), and then, from many forecast origins a week apart,
forecasts the next 7 days from the 8 weeks before and scores the forecast
against what the replay really did in those 7 days:

* MAPE (percent, over hours with a non-zero actual) and MASE (mean absolute
  error over the in-sample mean absolute error of the one-step naive
  forecast, as the forecast's own back-test reports it);
* the same for two baselines a capacity planner could use instead: the last
  value held flat, and the same hour of the previous week (seasonal naive);
* how often the actual fell inside the 80 % and 95 % intervals;
* which model the forecast chose, and its own back-test on the history.

    .venv/bin/python bench/bench_forecast.py [--traces kth,philly] [--weeks 8]

Figures, never pass/fail. Writes bench/results/forecast.json.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from common import write_result

from apportion.core.forecast import forecast
from apportion.core.scheduling import SchedulerConfig
from apportion.core.simulator import JobRecord, SimConfig, simulate
from apportion.traces import read_trace

TRACES = Path(__file__).parents[1] / "../shared/data/traces"
TRACE_FILES = {"kth": "KTH-SP2-1996-2.1-cln.swf.gz", "philly": "philly-gpu-jobs.csv.gz"}
HOUR = 3600.0
WEEK_H = 168


def hourly_mean(intervals: Iterable[tuple[float, float, int]], hours: int) -> np.ndarray:
    """Mean level per hour of the sum of ``size`` over ``[begin, end)``:
    the exact integral of the step function, not a sample of it."""
    times: list[float] = []
    deltas: list[int] = []
    for begin, end, size in intervals:
        if end > begin and size:
            times += [begin, end]
            deltas += [size, -size]
    if not times:
        return np.zeros(hours)
    order = np.argsort(np.asarray(times), kind="stable")
    t = np.asarray(times)[order]
    level = np.cumsum(np.asarray(deltas, dtype=float)[order])
    area = np.concatenate(([0.0], np.cumsum(level[:-1] * np.diff(t))))
    edges = np.arange(hours + 1) * HOUR
    at_edges = np.interp(edges, t, area, left=0.0, right=float(area[-1]))
    return np.asarray(np.diff(at_edges) / HOUR)


def series(records: Sequence[JobRecord]) -> tuple[np.ndarray, np.ndarray]:
    """Hourly allocated and demand (allocated + pending) of the primary resource."""
    hours = int(max(r.end for r in records) // HOUR) + 1
    allocated = hourly_mean(((r.start, r.end, r.size) for r in records), hours)
    pending = hourly_mean(((r.submit, r.start, r.size) for r in records), hours)
    return allocated, allocated + pending


def _mape(actual: np.ndarray, predicted: np.ndarray) -> float:
    nonzero = actual != 0
    if not nonzero.any():
        return float("nan")
    return float(np.mean(np.abs((actual[nonzero] - predicted[nonzero]) / actual[nonzero])) * 100)


def errors(actual: np.ndarray, predicted: np.ndarray, scale: float) -> tuple[float, ...]:
    """Hourly MAPE and MASE; MAPE of the 7 daily means; error of the week's
    mean (what "how much capacity next week" asks), in percent."""
    mase = float(np.mean(np.abs(actual - predicted)) / scale) if scale > 0 else float("nan")
    daily = _mape(actual.reshape(7, 24).mean(axis=1), predicted.reshape(7, 24).mean(axis=1))
    week = _mape(np.array([actual.mean()]), np.array([predicted.mean()]))
    return _mape(actual, predicted), mase, daily, week


def evaluate(values: np.ndarray, capacity: float, history_weeks: int,
             offset_s: float) -> dict[str, Any]:
    """Forecast 7 days from origins a week apart; score against the replay."""
    history_h = history_weeks * WEEK_H
    rows: list[dict[str, Any]] = []
    models: Counter[str] = Counter()
    for origin in range(history_h, len(values) - WEEK_H + 1, WEEK_H):
        past = values[origin - history_h:origin]
        future = values[origin:origin + WEEK_H]
        if not past.any() or not future.any():
            continue
        points = [(offset_s + (origin - history_h + i) * HOUR, float(v))
                  for i, v in enumerate(past)]
        now = offset_s + (origin - 1) * HOUR
        started = time.process_time()
        fc = forecast(points, 7 * 86400.0, HOUR, capacity, now)
        cpu_s = time.process_time() - started
        mean = np.array([p.mean for p in fc.points[:WEEK_H]])
        lo80 = np.array([p.lo80 for p in fc.points[:WEEK_H]])
        hi80 = np.array([p.hi80 for p in fc.points[:WEEK_H]])
        lo95 = np.array([p.lo95 for p in fc.points[:WEEK_H]])
        hi95 = np.array([p.hi95 for p in fc.points[:WEEK_H]])
        scale = float(np.mean(np.abs(np.diff(past))))
        models[fc.model] += 1
        rows.append({
            "origin_h": origin, "model": fc.model, "cpu_s": cpu_s,
            "forecast": errors(future, mean, scale),
            "last_value": errors(future, np.full(WEEK_H, past[-1]), scale),
            "same_hour_last_week": errors(future, past[-WEEK_H:], scale),
            "in80": float(np.mean((future >= lo80) & (future <= hi80))),
            "in95": float(np.mean((future >= lo95) & (future <= hi95))),
            "backtest_mape": fc.backtest.mape if fc.backtest else None,
        })
    return summarize(rows, models)


def summarize(rows: list[dict[str, Any]], models: Counter[str]) -> dict[str, Any]:
    def med(key: str, i: int) -> float:
        return round(float(np.nanmedian([r[key][i] for r in rows])), 3)

    def mean(key: str) -> float:
        return round(float(np.mean([r[key] for r in rows])), 3)

    wins = sum(r["forecast"][1] <= min(r["last_value"][1], r["same_hour_last_week"][1])
               for r in rows)
    backtests = [r["backtest_mape"] for r in rows if r["backtest_mape"] is not None]
    methods = ("forecast", "last_value", "same_hour_last_week")
    return {
        "origins": len(rows),
        "median_mape": {k: med(k, 0) for k in methods},
        "median_mase": {k: med(k, 1) for k in methods},
        "median_daily_mape": {k: med(k, 2) for k in methods},
        "median_week_mean_error_pct": {k: med(k, 3) for k in methods},
        "forecast_best_of_three": wins,
        "coverage80": mean("in80"), "coverage95": mean("in95"),
        "median_backtest_mape": round(float(np.median(backtests)), 3) if backtests else None,
        "models": dict(models.most_common()),
        "mean_forecast_cpu_s": mean("cpu_s"),
    }


def run(name: str, history_weeks: int) -> dict[str, Any] | None:
    path = TRACES / TRACE_FILES[name]
    if not path.exists():
        print(f"skipped {name}: {path} not found")
        return None
    trace = read_trace(path)
    config = SimConfig(SchedulerConfig(strategy="fifo", backfill="easy"), primary=trace.primary)
    started = time.perf_counter()
    result = simulate(trace.jobs, trace.nodes, config)
    replay_s = time.perf_counter() - started
    # In processors (SWF: cpu is in millicores inside) or GPUs.
    unit = 1000.0 if trace.primary == "cpu" else 1.0
    allocated, demand = (s / unit for s in series(result.records))
    capacity = sum(n.resources.get(trace.primary, 0) for n in trace.nodes) / unit
    offset = float(trace.header.get("UnixStartTime", "0").split()[0] or 0)
    out: dict[str, Any] = {"trace": path.name, "primary": trace.primary, "jobs": len(trace.jobs),
                           "hours": len(allocated), "capacity": capacity,
                           "replay_s": round(replay_s, 1), "history_weeks": history_weeks}
    for label, values in (("allocated", allocated), ("demand", demand)):
        out[label] = evaluate(values, capacity, history_weeks, offset)
        out[label]["mean_level"] = round(float(values.mean()), 1)
        report(name, label, out[label])
    return out


def report(name: str, label: str, s: dict[str, Any]) -> None:
    print(f"{name} {label}: {s['origins']} weekly origins, mean level {s['mean_level']}; "
          "medians as forecast / last value / same hour last week:")
    for key, what in (("median_mape", "hourly MAPE %"), ("median_mase", "hourly MASE"),
                      ("median_daily_mape", "daily-mean MAPE %"),
                      ("median_week_mean_error_pct", "week-mean error %")):
        v = s[key]
        print(f"  {what:18} {v['forecast']:>9} / {v['last_value']:>9} / "
              f"{v['same_hour_last_week']:>9}")
    print(f"  "
          f"forecast best in {s['forecast_best_of_three']}/{s['origins']}; "
          f"80 % interval held {s['coverage80'] * 100:.0f} %, 95 % held "
          f"{s['coverage95'] * 100:.0f} %; models {s['models']}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--traces", default="kth,philly")
    parser.add_argument("--weeks", type=int, default=8, help="weeks of history per forecast")
    args = parser.parse_args()
    results = {}
    for name in args.traces.split(","):
        result = run(name.strip(), args.weeks)
        if result is not None:
            results[name] = result
    write_result("forecast", {"results": results})


if __name__ == "__main__":
    main()
