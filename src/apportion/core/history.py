"""Metric history: rollups, retention and trends, as pure functions.

A series is one metric with one label set (``utilization`` of
``{facility: texas-1, resource: gpu}``). The store keeps raw samples for a
short time and fixed-step rollups (:class:`Bucket`) for a long time; both
are bounded by age and by a number of points per series, so a chatty node
cannot grow the store without limit.

Buckets are aligned to multiples of the step since the epoch, so the same
query over the same data always yields the same buckets, whichever server
answers it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any

import numpy as np

from apportion.core.errors import InvalidInput

MAX_SERIES_POINTS = 11_000
"""Most points one series answer may hold; a finer step is refused, not truncated."""

SeriesKey = tuple[str, tuple[tuple[str, str], ...]]


def _positive(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise InvalidInput(f"{name}: {value!r} must be a positive number of seconds", field=name)


@dataclass(frozen=True, slots=True)
class Sample:
    """One raw reading of a metric at a time."""

    metric: str
    labels: Mapping[str, str]
    at: float
    value: float

    @property
    def key(self) -> SeriesKey:
        return series_key(self.metric, self.labels)


def series_key(metric: str, labels: Mapping[str, str]) -> SeriesKey:
    return metric, tuple(sorted(labels.items()))


@dataclass(frozen=True, slots=True)
class Bucket:
    """Samples of one series within ``[start, start + step)``, summarised."""

    start: float
    min: float
    max: float
    mean: float
    count: int
    last: float


@dataclass(frozen=True, slots=True)
class Point:
    at: float
    value: float


class Direction(StrEnum):
    INCREASING = "increasing"
    DECREASING = "decreasing"
    STABLE = "stable"


@dataclass(frozen=True, slots=True)
class Trend:
    direction: Direction
    slope_per_s: float
    r2: float


@dataclass(frozen=True, slots=True)
class Series:
    points: tuple[Point, ...]
    trend: Trend


# --------------------------------------------------------------------------- rollup


def bucket_start(at: float, step_s: float) -> float:
    return math.floor(at / step_s) * step_s


def rollup(samples: Iterable[Sample], step_s: float) -> list[Bucket]:
    """Samples of one series summarised per ``step_s`` bucket, oldest first.

    Non-finite values are dropped: one NaN from a broken sensor would
    otherwise poison every mean it touches.
    """
    _positive("step_s", step_s)
    rows = sorted((s.at, s.value) for s in _one_series(samples) if math.isfinite(s.value))
    groups: dict[float, list[float]] = {}
    for at, value in rows:
        groups.setdefault(bucket_start(at, step_s), []).append(value)
    return [_summarise(start, values) for start, values in groups.items()]


def _one_series(samples: Iterable[Sample]) -> list[Sample]:
    items = list(samples)
    keys = {s.key for s in items}
    if len(keys) > 1:
        shown = ", ".join(sorted(k[0] + str(dict(k[1])) for k in keys)[:3])
        raise InvalidInput(f"samples: expected one series, got {len(keys)} ({shown}, ...)")
    return items


def _summarise(start: float, values: Sequence[float]) -> Bucket:
    # math.fsum: a mean of many large byte counts must not drift with order.
    mean = math.fsum(values) / len(values)
    return Bucket(start, min(values), max(values), mean, len(values), values[-1])


def merge(buckets: Iterable[Bucket], step_s: float) -> list[Bucket]:
    """Buckets of one series re-summarised into coarser ``step_s`` buckets
    (e.g. 5-minute rollups into hours for a 90-day chart); the mean is
    weighted by sample count, so it equals the mean of the raw samples."""
    _positive("step_s", step_s)
    groups: dict[float, list[Bucket]] = {}
    for b in sorted(buckets, key=lambda b: b.start):
        groups.setdefault(bucket_start(b.start, step_s), []).append(b)
    return [_combine(start, parts) for start, parts in groups.items()]


def _combine(start: float, parts: Sequence[Bucket]) -> Bucket:
    count = sum(b.count for b in parts)
    mean = math.fsum(b.mean * b.count for b in parts) / count
    low, high = min(b.min for b in parts), max(b.max for b in parts)
    return Bucket(start, low, high, mean, count, parts[-1].last)


def closed_rollup(
    samples: Iterable[Sample], step_s: float, now: float, *, since: float | None = None
) -> list[Bucket]:
    """The buckets that are complete at ``now`` (and start at or after
    ``since``, the end of the last rollup stored), ready to be stored once.

    A bucket still open could gain samples, so it is left for a later call.
    """
    return [
        b
        for b in rollup(samples, step_s)
        if b.start + step_s <= now and (since is None or b.start >= since)
    ]


# --------------------------------------------------------------------------- retention


@dataclass(frozen=True, slots=True)
class Retention:
    """How long and how much history is kept, per series."""

    raw_s: float = 24 * 3600.0
    rollup_step_s: float = 300.0
    rollup_s: float = 90 * 24 * 3600.0
    max_points: int = 30_000  # raw samples, and rollup buckets, each

    def __post_init__(self) -> None:
        for name in ("raw_s", "rollup_step_s", "rollup_s"):
            _positive(f"history.{name}", getattr(self, name))
        if self.max_points < 1:
            raise InvalidInput(
                f"history.max_points: {self.max_points} must be at least 1",
                field="history.max_points",
            )
        if self.rollup_step_s > self.rollup_s:
            raise InvalidInput(
                "history.rollup_step_s: must not exceed history.rollup_s",
                field="history.rollup_step_s",
            )


DEFAULT_RETENTION = Retention()
_RETENTION_KEYS = tuple(f.name for f in fields(Retention))


def retention_from_config(config: Mapping[str, Any]) -> Retention:
    """Retention from the ``[history]`` table: ``raw_s``, ``rollup_step_s``,
    ``rollup_s``, ``max_points``; errors name the key."""
    if not isinstance(config, Mapping):
        raise InvalidInput("history: expected a table", field="history")
    values: dict[str, Any] = {}
    for key, value in config.items():
        path = f"history.{key}"
        if key not in _RETENTION_KEYS:
            known = ", ".join(_RETENTION_KEYS)
            raise InvalidInput(f"{path}: unknown key; known keys are {known}", field=path)
        whole = key == "max_points"
        if isinstance(value, bool) or not isinstance(value, int if whole else int | float):
            kind = "a whole number" if whole else "a number of seconds"
            raise InvalidInput(f"{path}: expected {kind}, got {value!r}", field=path)
        values[key] = value
    return Retention(**values)


def prune_samples(samples: Iterable[Sample], now: float, retention: Retention) -> list[Sample]:
    """Raw samples still kept at ``now``: younger than ``raw_s`` and, per
    series, the newest ``max_points``. Sorted by series, then time."""
    young = (s for s in samples if s.at > now - retention.raw_s)
    kept: list[Sample] = []
    for group in _by_series(young).values():
        group.sort(key=lambda s: s.at)
        kept.extend(group[-retention.max_points :])
    return kept


def prune_buckets(buckets: Iterable[Bucket], now: float, retention: Retention) -> list[Bucket]:
    """Rollup buckets of one series still kept at ``now``: those ending after
    ``now - rollup_s``, at most the newest ``max_points``. Oldest first."""
    horizon = now - retention.rollup_s
    young = sorted(
        (b for b in buckets if b.start + retention.rollup_step_s > horizon),
        key=lambda b: b.start,
    )
    return young[-retention.max_points :]


def _by_series(samples: Iterable[Sample]) -> dict[SeriesKey, list[Sample]]:
    groups: dict[SeriesKey, list[Sample]] = {}
    for s in samples:
        groups.setdefault(s.key, []).append(s)
    return {k: groups[k] for k in sorted(groups)}


# --------------------------------------------------------------------------- series and trend


def series(
    data: Sequence[Sample] | Sequence[Bucket],
    *,
    window_s: float,
    step_s: float,
    now: float,
) -> Series:
    """One series over ``(now - window_s, now]`` at ``step_s``: a point per
    non-empty step (the mean at the step's start; empty steps are left out,
    never filled with zeros), and its trend. ``data`` is raw samples or rollup
    buckets of one series; a step finer than the buckets keeps their step."""
    _positive("window_s", window_s)
    _positive("step_s", step_s)
    if window_s / step_s > MAX_SERIES_POINTS:
        raise InvalidInput(
            f"step: {step_s:.10g} s over {window_s:.10g} s gives more than {MAX_SERIES_POINTS} "
            f"points; use a step of at least {math.ceil(window_s / MAX_SERIES_POINTS)} s",
            field="step",
        )
    start = now - window_s
    buckets = _window_buckets(data, start, now, step_s)
    points = tuple(Point(b.start, b.mean) for b in buckets)
    return Series(points, trend(points))


def _window_buckets(
    data: Sequence[Sample] | Sequence[Bucket], start: float, now: float, step_s: float
) -> list[Bucket]:
    samples = [d for d in data if isinstance(d, Sample) and start < d.at <= now]
    stored = [d for d in data if isinstance(d, Bucket) and start <= d.start <= now]
    if samples and stored:
        raise InvalidInput("data: expected raw samples or rollup buckets, not both")
    if samples:
        return rollup(samples, step_s)
    return merge(stored, step_s)


def trend(points: Sequence[Point], *, min_change: float = 0.05, min_t: float = 2.0) -> Trend:
    """Least-squares line through the points, and whether it is a trend.

    ``stable`` unless both hold: the fitted change over the points' span is at
    least ``min_change`` (5 %) of the mean's magnitude, and the slope is
    significant (``|slope / standard error| >= min_t``, about 95 % for all
    but tiny samples). Fewer than 3 points are always stable. ``r2`` is 0
    when all values are equal (there is no variance to explain).
    """
    if len(points) < 2:
        return Trend(Direction.STABLE, 0.0, 0.0)
    x = np.array([p.at for p in points], dtype=float)
    y = np.array([p.value for p in points], dtype=float)
    mean = float(y.mean())
    # Centre both axes: epoch seconds (~1.7e9) and byte counts (~1e12) would
    # otherwise drown a small slope in rounding.
    x -= x.mean()
    y -= mean
    total = float(np.sum(y**2))
    if total == 0.0 or not np.any(x):
        return Trend(Direction.STABLE, 0.0, 0.0)  # flat, or a single instant
    design = np.column_stack([x, np.ones_like(x)])
    (slope, intercept), *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = float(np.sum((y - (slope * x + intercept)) ** 2))
    slope = float(slope)
    direction = Direction.STABLE
    if _is_trend(slope, x, mean, residual, min_change, min_t):
        direction = Direction.INCREASING if slope > 0 else Direction.DECREASING
    return Trend(direction, slope, max(0.0, 1.0 - residual / total))


def _is_trend(
    slope: float,
    x: np.ndarray[Any, np.dtype[np.float64]],
    mean: float,
    residual: float,
    min_change: float,
    min_t: float,
) -> bool:
    n = len(x)
    if n < 3 or slope == 0.0:
        return False
    change = abs(slope) * float(x.max() - x.min())
    if change < min_change * abs(mean):
        return False
    if residual <= 0.0:
        return True  # an exact line: infinitely significant
    spread = float(np.sum(x**2))  # x is centred, so this is the sum of (x - mean x)²
    stderr = math.sqrt(residual / (n - 2) / spread)
    return abs(slope) / stderr >= min_t
