"""Metric history: rollups, retention, series and trend."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apportion.core.history import (
    DEFAULT_RETENTION,
    MAX_SERIES_POINTS,
    Bucket,
    Direction,
    Point,
    Retention,
    Sample,
    Series,
    Trend,
    closed_rollup,
    merge,
    prune_buckets,
    prune_samples,
    retention_from_config,
    rollup,
    series,
    trend,
)
from apportion.exceptions import InvalidInput

GPU = {"facility": "texas-1", "resource": "gpu"}
EPOCH = 1_700_000_100.0  # a multiple of 300 s, so buckets start on it


def util(at: float, value: float, labels: dict[str, str] | None = None) -> Sample:
    return Sample("utilization", GPU if labels is None else labels, at, value)


# --------------------------------------------------------------------------- rollup


def test_rollup_aligns_buckets_to_the_step() -> None:
    samples = [util(650, 5), util(0, 1), util(10, 2), util(299, 3), util(300, 4)]
    assert rollup(samples, 300) == [
        Bucket(0, 1, 3, 2.0, 3, 3),
        Bucket(300, 4, 4, 4.0, 1, 4),
        Bucket(600, 5, 5, 5.0, 1, 5),
    ]


def test_rollup_drops_non_finite_values() -> None:
    assert rollup([util(1, 2), util(2, float("nan")), util(3, float("inf"))], 60) == [
        Bucket(0, 2, 2, 2.0, 1, 2)
    ]


def test_rollup_refuses_mixed_series() -> None:
    with pytest.raises(InvalidInput, match="expected one series, got 2"):
        rollup([util(1, 2), util(1, 2, {"facility": "oslo"})], 60)
    with pytest.raises(InvalidInput, match="step_s"):
        rollup([], 0)


def test_merge_weights_the_mean_by_count() -> None:
    buckets = rollup([util(0, 1), util(10, 2), util(299, 3), util(300, 4), util(650, 5)], 300)
    assert merge(buckets, 900) == [Bucket(0, 1, 5, 3.0, 5, 5)]
    assert merge(buckets, 600) == [Bucket(0, 1, 4, 2.5, 4, 4), Bucket(600, 5, 5, 5.0, 1, 5)]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20_000), st.integers(0, 1000)), min_size=1, max_size=60))
def test_merged_rollups_equal_a_rollup_at_the_coarse_step(rows: list[tuple[int, int]]) -> None:
    samples = [util(at, value) for at, value in rows]
    direct = rollup(samples, 3600)
    merged = merge(rollup(samples, 300), 3600)
    assert [(b.start, b.min, b.max, b.count, b.last) for b in merged] == [
        (b.start, b.min, b.max, b.count, b.last) for b in direct
    ]
    assert [b.mean for b in merged] == pytest.approx([b.mean for b in direct])


def test_closed_rollup_leaves_the_open_bucket() -> None:
    samples = [util(0, 1), util(310, 2), util(650, 3)]
    assert closed_rollup(samples, 300, 650) == [
        Bucket(0, 1, 1, 1.0, 1, 1),
        Bucket(300, 2, 2, 2.0, 1, 2),
    ]
    assert closed_rollup(samples, 300, 650, since=300) == [Bucket(300, 2, 2, 2.0, 1, 2)]
    assert closed_rollup(samples, 300, 900) == rollup(samples, 300)


# --------------------------------------------------------------------------- retention


def test_default_retention() -> None:
    assert Retention(86400, 300, 7_776_000, 30_000) == DEFAULT_RETENTION


def test_prune_samples_by_age_and_count_per_series() -> None:
    oslo = {"facility": "oslo", "resource": "gpu"}
    samples = [util(t, t) for t in (5, 100, 200, 300, 400)] + [util(50, 1, oslo)]
    kept = prune_samples(samples, 410, Retention(raw_s=400, max_points=3))
    assert [(s.labels["facility"], s.at) for s in kept] == [
        ("oslo", 50),
        ("texas-1", 200),
        ("texas-1", 300),
        ("texas-1", 400),
    ]


def test_prune_buckets_keeps_any_bucket_that_ends_inside_the_window() -> None:
    buckets = [Bucket(start, 0, 0, 0.0, 1, 0) for start in (0, 300, 600, 900, 1200)]
    retention = Retention(rollup_s=1000, max_points=10)
    assert [b.start for b in prune_buckets(buckets, 1500, retention)] == [300, 600, 900, 1200]
    retention = Retention(rollup_s=1000, max_points=2)
    assert [b.start for b in prune_buckets(buckets, 1500, retention)] == [900, 1200]


def test_retention_from_config() -> None:
    assert retention_from_config({}) == DEFAULT_RETENTION
    assert retention_from_config(
        {"raw_s": 3600, "rollup_step_s": 60.0, "rollup_s": 86400, "max_points": 10}
    ) == Retention(3600, 60, 86400, 10)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"raw": 1},
            "history.raw: unknown key; known keys are raw_s, rollup_step_s, rollup_s, max_points",
        ),
        ({"raw_s": "1d"}, "history.raw_s: expected a number of seconds, got '1d'"),
        ({"max_points": 1.5}, "history.max_points: expected a whole number, got 1.5"),
        ({"max_points": True}, "history.max_points: expected a whole number, got True"),
        ({"max_points": 0}, "history.max_points: 0 must be at least 1"),
        ({"rollup_s": -5}, "history.rollup_s: -5 must be a positive number of seconds"),
        ({"raw_s": float("inf")}, "history.raw_s: inf must be a positive number of seconds"),
        (
            {"rollup_step_s": 600, "rollup_s": 300},
            "history.rollup_step_s: must not exceed history.rollup_s",
        ),
    ],
)
def test_retention_config_errors(config: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        retention_from_config(config)
    assert caught.value.message == message


# --------------------------------------------------------------------------- series


def test_series_from_samples_leaves_out_empty_steps() -> None:
    samples = [util(EPOCH + t, v) for t, v in [(-10, 9), (10, 1), (20, 3), (130, 5), (250, 7)]]
    got = series(samples, window_s=300, step_s=60, now=EPOCH + 300)
    assert got.points == (Point(EPOCH, 2.0), Point(EPOCH + 120, 5.0), Point(EPOCH + 240, 7.0))
    assert got.trend.direction is Direction.INCREASING
    assert got.trend.slope_per_s == pytest.approx(0.02083333333)


def test_series_from_rollup_buckets_merges_to_the_step() -> None:
    buckets = [Bucket(EPOCH + 300 * i, i, i, float(i), 2, i) for i in range(12)]
    got = series(buckets, window_s=3600, step_s=900, now=EPOCH + 3600)
    assert got.points == (
        Point(EPOCH, 1.0),
        Point(EPOCH + 900, 4.0),
        Point(EPOCH + 1800, 7.0),
        Point(EPOCH + 2700, 10.0),
    )
    assert got.trend.direction is Direction.INCREASING
    assert (got.trend.slope_per_s, got.trend.r2) == pytest.approx((1 / 300, 1.0))


def test_series_window_excludes_old_data() -> None:
    samples = [util(EPOCH - 1000, 50), util(EPOCH + 10, 1)]
    assert series(samples, window_s=600, step_s=60, now=EPOCH + 100) == Series(
        (Point(EPOCH, 1.0),), Trend(Direction.STABLE, 0.0, 0.0)
    )


def test_series_refuses_too_many_points_and_mixed_data() -> None:
    with pytest.raises(InvalidInput) as caught:
        series([], window_s=86400 * 90, step_s=60, now=EPOCH)
    assert caught.value.message == (
        f"step: 60 s over 7776000 s gives more than {MAX_SERIES_POINTS} points; "
        "use a step of at least 707 s"
    )
    mixed: Any = [util(EPOCH, 1), Bucket(EPOCH, 1, 1, 1.0, 1, 1)]
    with pytest.raises(InvalidInput, match="not both"):
        series(mixed, window_s=600, step_s=60, now=EPOCH + 1)
    with pytest.raises(InvalidInput, match="window_s"):
        series([], window_s=0, step_s=60, now=EPOCH)


# --------------------------------------------------------------------------- trend


def line(values: Sequence[float], step: float = 60.0) -> list[Point]:
    return [Point(EPOCH + step * i, v) for i, v in enumerate(values)]


def test_trend_of_an_exact_line() -> None:
    up, down = trend(line([10, 20, 30, 40])), trend(line([40, 30, 20, 10]))
    assert (up.direction, down.direction) == (Direction.INCREASING, Direction.DECREASING)
    assert (up.slope_per_s, up.r2) == pytest.approx((1 / 6, 1.0))
    assert (down.slope_per_s, down.r2) == pytest.approx((-1 / 6, 1.0))


def test_flat_series_is_stable_with_r2_zero() -> None:
    assert trend(line([5, 5, 5, 5])) == Trend(Direction.STABLE, 0.0, 0.0)


def test_too_few_points_are_stable() -> None:
    assert trend([]) == Trend(Direction.STABLE, 0.0, 0.0)
    assert trend(line([1])) == Trend(Direction.STABLE, 0.0, 0.0)
    got = trend(line([1, 2]))
    assert got.direction is Direction.STABLE
    assert (got.slope_per_s, got.r2) == pytest.approx((1 / 60, 1.0))


def test_a_small_change_relative_to_the_mean_is_stable() -> None:
    # 100 → 104 over the window: a perfect fit, but only 4 % of the mean.
    got = trend(line([100, 101, 102, 103, 104]))
    assert got.direction is Direction.STABLE
    assert got.slope_per_s == pytest.approx(1 / 60)
    assert trend(line([100, 102, 104, 106, 108])).direction is Direction.INCREASING


def test_an_insignificant_slope_is_stable() -> None:
    noisy = [10, 30, 5, 35, 8, 32, 12, 28]  # big swings, little drift
    got = trend(line(noisy))
    assert got.direction is Direction.STABLE
    assert got.r2 < 0.1


def test_trend_is_not_lost_to_epoch_rounding() -> None:
    # A 1-byte-per-second rise on a 1e12 baseline at epoch-scale times.
    points = [Point(EPOCH + i, 1e12 + i) for i in range(10)]
    assert trend(points).slope_per_s == pytest.approx(1.0, rel=1e-6)
