"""Forecasts of one capacity series (an allocated amount, or demand) over time.

The server asks, per group and resource, "where is this going over the next
days, how sure are we, and when does it run out?". This module answers for
one series with plain numpy:

* ``ewma``: simple exponential smoothing, a flat forecast at the smoothed level.
* ``linear_trend``: a least-squares line through the history.
* ``holt_winters_daily`` / ``holt_winters_weekly`` / ``holt_winters_daily_weekly``:
  additive Holt-Winters (level, trend and one or two seasonal cycles) in its
  error-correction form, smoothing constants picked from a grid by one-step
  in-sample error. A season is a candidate only when the history holds two
  whole cycles of it, because one cycle cannot tell a season from noise.
* ``insufficient_history``: fewer than ``MIN_POINTS`` steps; a flat forecast at
  the last value with no interval to speak of.

Every candidate the history allows is back-tested on the most recent steps
(held back from its fit); the lowest error wins, and a more complex model must
beat a simpler one outright, not tie it. The chosen model is refitted on the
whole history. Intervals come from the in-sample one-step residuals, widened
with the horizon by each model's own error-propagation formula. Exhaustion is
when the forecast *mean* reaches capacity (``exhaustion_at``); the earlier time
when the upper 80 % bound does is ``exhaustion_hi80_at``.

Pure: times are passed in (``now``), nothing is read from a clock, nothing is
random.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np
from numpy.typing import NDArray

from apportion.core.errors import InvalidInput

Array = NDArray[np.float64]

DAY_S = 86_400.0
WEEK_S = 7 * DAY_S
Z80 = 1.2815515655446004
Z95 = 1.959963984540054
MIN_POINTS = 3
MIN_HOLDOUT = 24
MAX_POINTS = 20_000
"""Older steps are dropped: they cost fit time and say little about next week."""

INSUFFICIENT = "insufficient_history"
EWMA = "ewma"
LINEAR = "linear_trend"
SNAIVE_DAILY = "seasonal_naive_daily"
SNAIVE_WEEKLY = "seasonal_naive_weekly"
HW_DAILY = "holt_winters_daily"
HW_WEEKLY = "holt_winters_weekly"
HW_DOUBLE = "holt_winters_daily_weekly"
SNAIVE_MODELS = frozenset({SNAIVE_DAILY, SNAIVE_WEEKLY})
SEASONAL_MODELS = frozenset({HW_DAILY, HW_WEEKLY, HW_DOUBLE}) | SNAIVE_MODELS

# Smoothing-constant grids. Small values are where real capacity series live
# (slow drift, stable cycles); the large ones let EWMA follow a random walk.
_EWMA_ALPHAS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0)
_HW_ALPHAS = (0.02, 0.05, 0.1, 0.2, 0.35, 0.5)
_HW_BETAS = (0.0, 0.001, 0.005, 0.02)
_HW_GAMMAS = (0.01, 0.05, 0.15, 0.3)


class ForecastPoint(NamedTuple):
    t: float
    mean: float
    lo80: float
    hi80: float
    lo95: float
    hi95: float


@dataclass(frozen=True, slots=True)
class Backtest:
    """Error of the chosen model on the last ``holdout_points`` steps, fitted
    without them. ``mape`` is in percent over non-zero actuals (None when all
    are zero); ``mase`` scales the mean absolute error by the one-step naive
    forecast's in-sample error (None for a constant training series)."""

    mape: float | None
    mase: float | None
    holdout_points: int


@dataclass(frozen=True, slots=True)
class Candidate:
    """One model the history allowed, with its back-test error."""

    model: str
    mape: float | None
    mase: float | None
    mae: float


@dataclass(frozen=True, slots=True)
class Forecast:
    model: str
    points: tuple[ForecastPoint, ...]
    exhaustion_at: float | None
    """First time the forecast mean reaches ``capacity`` (linear between
    points); ``now`` when the latest value already does; None otherwise."""
    backtest: Backtest | None
    exhaustion_hi80_at: float | None = None
    """The same for the upper 80 % bound: the earliest plausible exhaustion."""
    step_s: float = 0.0
    history_points: int = 0
    reason: str = ""
    candidates: tuple[Candidate, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def seasonal(self) -> bool:
        return self.model in SEASONAL_MODELS


# -- input ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Series:
    start: int
    """Index of ``y[0]`` on the epoch-aligned grid (time = index * step), so
    seasonal phases mean the same hour of day / week on every call."""
    y: Array
    observed: NDArray[np.bool_]

    @property
    def last(self) -> int:
        return self.start + int(self.y.size) - 1


def _resample(
    points: Sequence[tuple[float, float | None]], step_s: float, now: float, max_points: int
) -> tuple[_Series | None, list[str]]:
    """Average the points into grid steps; fill empty steps by interpolation
    because the recursive models need an unbroken series."""
    notes: list[str] = []
    raw = np.array(
        [(float(t), math.nan if v is None else float(v)) for t, v in points], dtype=np.float64
    ).reshape(-1, 2)
    t, v = raw[:, 0], raw[:, 1]
    finite = np.isfinite(t) & np.isfinite(v)
    if (bad := int((~finite).sum())) > 0:
        notes.append(f"{bad} point(s) with a missing or non-finite value were ignored")
    future = finite & (t > now)
    if (ahead := int(future.sum())) > 0:
        notes.append(f"{ahead} point(s) after now were ignored")
    keep = finite & ~future
    t, v = t[keep], v[keep]
    if t.size == 0:
        return None, notes
    index = np.floor(t / step_s).astype(np.int64)
    last = int(index.max())
    first = max(int(index.min()), last - max_points + 1)
    recent = index >= first
    if (old := int((~recent).sum())) > 0:
        notes.append(f"{old} point(s) older than {max_points} steps were ignored")
    offset = index[recent] - first
    size = last - first + 1
    sums = np.bincount(offset, weights=v[recent], minlength=size)
    counts = np.bincount(offset, minlength=size)
    observed = counts > 0
    y = np.zeros(size, dtype=np.float64)
    y[observed] = sums[observed] / counts[observed]
    if (empty := int((~observed).sum())) > 0:
        holes = np.flatnonzero(~observed)
        y[holes] = np.interp(holes, np.flatnonzero(observed), y[observed])
        notes.append(f"{empty} empty step(s) were filled by linear interpolation")
    return _Series(first, y, observed), notes


def _season_steps(period_s: float, step_s: float) -> int | None:
    """Steps per cycle, when the step divides the cycle evenly (else the
    phases would drift and the season is unusable)."""
    ratio = period_s / step_s
    steps = round(ratio)
    if steps >= 2 and abs(ratio - steps) < 1e-9 * ratio:
        return int(steps)
    return None


# -- models ---------------------------------------------------------------------


class _Fitted(Protocol):
    @property
    def sigma(self) -> float: ...

    def mean_sd(self, h: int) -> tuple[Array, Array]: ...


@dataclass(frozen=True, slots=True)
class _LinearFit:
    intercept: float
    slope: float
    n: int
    xbar: float
    sxx: float
    sigma: float

    def mean_sd(self, h: int) -> tuple[Array, Array]:
        x = np.arange(self.n, self.n + h, dtype=np.float64)
        mean = self.intercept + self.slope * x
        # The textbook prediction interval: noise plus the uncertainty of the
        # fitted line, which grows with the distance from the data's centre.
        leverage = 1.0 + 1.0 / self.n
        spread = (x - self.xbar) ** 2 / self.sxx if self.sxx > 0 else np.zeros(h)
        return mean, self.sigma * np.sqrt(leverage + spread)


def _fit_linear(y: Array) -> _LinearFit:
    n = int(y.size)
    x = np.arange(n, dtype=np.float64)
    xbar = float(x.mean())
    sxx = float(((x - xbar) ** 2).sum())
    slope = float(((x - xbar) * (y - y.mean())).sum() / sxx) if sxx > 0 else 0.0
    intercept = float(y.mean()) - slope * xbar
    resid = y - (intercept + slope * x)
    sigma = math.sqrt(float((resid**2).sum()) / (n - 2)) if n > 2 else 0.0
    return _LinearFit(intercept, slope, n, xbar, sxx, sigma)


@dataclass(frozen=True, slots=True)
class _SeasonalNaiveFit:
    """Every step repeats the same phase of the last cycle (Hyndman's
    snaive). Replayed cluster traces showed why it is a candidate: bursty
    utilization repeats its weekly shape too roughly for smoothing to help,
    and there it beat every smoothed model."""

    cycle: Array
    sigma: float

    def mean_sd(self, h: int) -> tuple[Array, Array]:
        steps = np.arange(h)
        mean = self.cycle[steps % self.cycle.size]
        # The error of a repeated cycle grows with each cycle repeated.
        return mean, self.sigma * np.sqrt(steps // self.cycle.size + 1.0)


def _fit_snaive(y: Array, period: int) -> _SeasonalNaiveFit:
    diffs = y[period:] - y[:-period]
    sigma = math.sqrt(float((diffs**2).mean())) if diffs.size else 0.0
    return _SeasonalNaiveFit(y[-period:].copy(), sigma)


@dataclass(frozen=True, slots=True)
class _EtsFit:
    """Additive exponential smoothing state after the last observation."""

    level: float
    trend: float
    seasons: tuple[tuple[int, Array], ...]
    last: int
    alpha: float
    beta: float
    gammas: tuple[float, ...]
    sigma: float

    def mean_sd(self, h: int) -> tuple[Array, Array]:
        steps = np.arange(1, h + 1)
        mean = self.level + self.trend * steps.astype(np.float64)
        for m, season in self.seasons:
            mean = mean + season[(self.last + steps) % m]
        # ETS(A,A,A) h-step variance (Hyndman et al. 2008, class 1):
        # sigma^2 * (1 + sum_{j<h} c_j^2), c_j = alpha + beta*j + gamma*[m | j].
        j = np.arange(1, max(h, 1), dtype=np.float64)
        c = self.alpha + self.beta * j
        for (m, _), gamma in zip(self.seasons, self.gammas, strict=True):
            c = c + gamma * (j % m == 0)
        var = 1.0 + np.concatenate(([0.0], np.cumsum(c * c)))[:h]
        return mean, self.sigma * np.sqrt(var)


def _grid(trend: bool, n_seasons: int) -> tuple[Array, Array, Array]:
    """Every admissible (alpha, beta, gammas) combination as columns."""
    if not trend and n_seasons == 0:
        alphas = np.array(_EWMA_ALPHAS)
        return alphas, np.zeros_like(alphas), np.zeros((0, alphas.size))
    rows: list[tuple[float, ...]] = []
    gamma_sets: list[tuple[float, ...]] = [()]
    for _ in range(n_seasons):
        gamma_sets = [(*g, x) for g in gamma_sets for x in _HW_GAMMAS]
    for a in _HW_ALPHAS:
        for b in _HW_BETAS if trend else (0.0,):
            for gs in gamma_sets:
                # The usual admissibility bounds; outside them the recursion
                # can amplify its own errors.
                if b <= a and sum(gs) <= 1.0 - a:
                    rows.append((a, b, *gs))
    table = np.array(rows, dtype=np.float64).T
    return table[0], table[1], table[2:]


def _initial_state(
    y: Array, start: int, periods: tuple[int, ...], trend: bool
) -> tuple[float, float, list[Array]]:
    """Level, trend and seasonal indices from the first two longest cycles:
    cycle means give level and slope, per-phase means of what is left give
    each season (shortest first, so the longer one keeps only its own part)."""
    if not periods:
        return float(y[0]), 0.0, []
    m = max(periods)
    first, second = float(y[:m].mean()), float(y[m : 2 * m].mean())
    slope = (second - first) / m if trend else 0.0
    t = np.arange(2 * m)
    left = y[: 2 * m] - (first + slope * (t - (m - 1) / 2))
    seasons: list[Array] = []
    for period in periods:
        phase = (start + t) % period
        season = np.bincount(phase, weights=left, minlength=period) / np.bincount(
            phase, minlength=period
        )
        season = season - season.mean()
        left = left - season[phase]
        seasons.append(season)
    # State "before" step 0, so the first one-step forecast is the fitted line.
    return first - slope * (m - 1) / 2 - slope, slope, seasons


def _fit_ets(y: Array, start: int, periods: tuple[int, ...], trend: bool) -> _EtsFit:
    """Run the recursion for every grid combination at once (a column each)
    and keep the one with the least one-step squared error."""
    alphas, betas, gammas = _grid(trend, len(periods))
    level0, trend0, seasons0 = _initial_state(y, start, periods, trend)
    combos = alphas.size
    level = np.full(combos, level0)
    slope = np.full(combos, trend0)
    seasons = [np.tile(s, (combos, 1)) for s in seasons0]
    n = int(y.size)
    phases = [((start + np.arange(n)) % p).tolist() for p in periods]
    # The first cycle fed the initial state, so its errors are flattering.
    warmup = max(periods) if periods else 1
    sse = np.zeros(combos)
    for t in range(n):
        guess = level + slope
        for k, season in enumerate(seasons):
            guess = guess + season[:, phases[k][t]]
        err = y[t] - guess
        if t >= warmup:
            sse += err * err
        level = level + slope + alphas * err
        if trend:
            slope = slope + betas * err
        for k, season in enumerate(seasons):
            season[:, phases[k][t]] += gammas[k] * err
    best = int(np.argmin(sse))
    scored = max(n - warmup, 1)
    return _EtsFit(
        level=float(level[best]),
        trend=float(slope[best]),
        seasons=tuple((p, s[best].copy()) for p, s in zip(periods, seasons, strict=True)),
        last=start + n - 1,
        alpha=float(alphas[best]),
        beta=float(betas[best]),
        gammas=tuple(float(g[best]) for g in gammas),
        sigma=math.sqrt(float(sse[best]) / scored),
    )


@dataclass(frozen=True, slots=True)
class _Spec:
    name: str
    periods: tuple[int, ...]
    min_points: int


def _specs(step_s: float) -> list[_Spec]:
    """Candidate models, simplest first (ties go to the simpler one)."""
    day = _season_steps(DAY_S, step_s)
    week = _season_steps(WEEK_S, step_s)
    specs = [_Spec(EWMA, (), 2), _Spec(LINEAR, (), 3)]
    if day is not None:
        specs.append(_Spec(SNAIVE_DAILY, (day,), 2 * day))
    if week is not None:
        specs.append(_Spec(SNAIVE_WEEKLY, (week,), 2 * week))
    if day is not None:
        specs.append(_Spec(HW_DAILY, (day,), 2 * day))
    if week is not None:
        specs.append(_Spec(HW_WEEKLY, (week,), 2 * week))
    if day is not None and week is not None:
        specs.append(_Spec(HW_DOUBLE, (day, week), 2 * week))
    return specs


def _fit(spec: _Spec, y: Array, start: int) -> _Fitted:
    if spec.name == LINEAR:
        return _fit_linear(y)
    if spec.name in SNAIVE_MODELS:
        return _fit_snaive(y, spec.periods[0])
    return _fit_ets(y, start, spec.periods, trend=spec.name != EWMA)


# -- back-test and selection ------------------------------------------------------


def _errors(
    actual: Array, predicted: Array, train: Array, observed: NDArray[np.bool_]
) -> Candidate:
    """Score only observed steps: an interpolated step is our own guess."""
    mask = observed if observed.any() else np.ones_like(observed)
    a, p = actual[mask], predicted[mask]
    abs_err = np.abs(a - p)
    mae = float(abs_err.mean())
    nonzero = a != 0
    mape = float((abs_err[nonzero] / np.abs(a[nonzero])).mean() * 100) if nonzero.any() else None
    scale = float(np.abs(np.diff(train)).mean()) if train.size > 1 else 0.0
    if scale > 0:
        mase: float | None = mae / scale
    else:
        mase = 0.0 if mae == 0 else None
    return Candidate("", mape, mase, mae)


def _select(
    series: _Series, specs: list[_Spec], horizon: int
) -> tuple[_Spec, Candidate | None, int, tuple[Candidate, ...]]:
    n = int(series.y.size)
    # Hold back as much as will be forecast (at least MIN_HOLDOUT, as a couple
    # of steps judge models by noise), but never more than a quarter of the
    # history, so the fits still see most of it.
    holdout = min(max(horizon, MIN_HOLDOUT), max(1, n // 4))
    train = n - holdout
    eligible = [s for s in specs if s.min_points <= train]
    if not eligible:
        usable = [s for s in specs if s.min_points <= n]
        return usable[0], None, 0, ()
    y_train, y_test = series.y[:train], series.y[train:]
    tolerance = 1e-9 * max(1.0, float(np.abs(series.y).mean()))
    scored: list[Candidate] = []
    best: tuple[_Spec, Candidate, float] | None = None
    for spec in eligible:
        mean, _ = _fit(spec, y_train, series.start).mean_sd(holdout)
        c = _errors(y_test, mean, y_train, series.observed[train:])
        c = Candidate(spec.name, c.mape, c.mase, c.mae)
        scored.append(c)
        score = c.mae
        earlier = train - holdout
        if spec.min_points <= earlier:
            # A second, earlier fold: one held-back window judges by its luck.
            prior, _ = _fit(spec, series.y[:earlier], series.start).mean_sd(holdout)
            score = (score + _errors(series.y[earlier:train], prior, series.y[:earlier],
                                     series.observed[earlier:train]).mae) / 2
        if best is None or score < best[2] - tolerance:
            best = (spec, c, score)
    assert best is not None
    return best[0], best[1], holdout, tuple(scored)


# -- output ---------------------------------------------------------------------


def _crossing(start: tuple[float, float], times: Array, values: Array, cap: float) -> float | None:
    """First time the piecewise-linear path through ``start`` and the points
    reaches ``cap``."""
    prev_t, prev_v = start
    for t, v in zip(times.tolist(), values.tolist(), strict=True):
        if v >= cap:
            if v == prev_v:
                return float(t)
            return float(prev_t + (cap - prev_v) / (v - prev_v) * (t - prev_t))
        prev_t, prev_v = t, v
    return None


def _points(times: Array, mean: Array, sd: Array, floor: float | None) -> tuple[Array, ...]:
    rows = [mean, mean - Z80 * sd, mean + Z80 * sd, mean - Z95 * sd, mean + Z95 * sd]
    if floor is not None:
        rows = [np.maximum(r, floor) for r in rows]
    return (times, *rows)


def _reason(spec: _Spec, best: Candidate | None, candidates: tuple[Candidate, ...],
            step_s: float, n: int) -> str:
    day = _season_steps(DAY_S, step_s)
    if best is None:
        return f"{spec.name}: {n} steps are too few to hold any back for a back-test"
    others = ", ".join(f"{c.model} {_fmt(c.mase)}" for c in candidates)
    text = f"{spec.name}: lowest back-test error (MASE {_fmt(best.mase)}; candidates: {others})"
    if spec.name not in SEASONAL_MODELS:
        if day is None:
            text += f"; the step ({step_s:g} s) does not divide a day, so no seasonal model"
        elif n < 2 * day:
            text += f"; seasonal models need 2 daily cycles ({2 * day} steps), history has {n}"
    return text


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def forecast(
    points: Sequence[tuple[float, float | None]],
    horizon_s: float,
    step_s: float,
    capacity: float | None,
    now: float,
    *,
    max_points: int = MAX_POINTS,
) -> Forecast:
    """Forecast ``points`` ((time, value) pairs, any order, gaps and NaN
    allowed) from the last step up to ``now + horizon_s``, one point per
    ``step_s`` on the epoch-aligned grid."""
    if not step_s > 0 or not math.isfinite(step_s):
        raise InvalidInput("step_s: must be a positive number of seconds", field="step_s")
    if not horizon_s >= 0 or not math.isfinite(horizon_s):
        raise InvalidInput("horizon_s: must be >= 0 seconds", field="horizon_s")
    series, notes = _resample(points, step_s, now, max_points)
    end = math.floor((now + horizon_s) / step_s)
    if series is None or series.y.size < MIN_POINTS:
        return _insufficient(series, step_s, end, capacity, now, notes)
    if math.floor(now / step_s) > series.last:
        notes.append("the latest value is older than one step; the forecast covers the gap")
    horizon = max(0, end - series.last)
    specs = [s for s in _specs(step_s) if s.min_points <= series.y.size]
    spec, best, holdout, candidates = _select(series, specs, horizon)
    fitted = _fit(spec, series.y, series.start)
    mean, sd = fitted.mean_sd(horizon)
    times = (series.last + np.arange(1, horizon + 1)) * step_s
    floor = 0.0 if float(series.y.min()) >= 0 else None
    cols = _points(times.astype(np.float64), mean, sd, floor)
    last = (series.last * step_s, float(series.y[-1]))
    exhaust, exhaust80 = _exhaustion(last, cols[0], cols[1], cols[3], capacity, now)
    return Forecast(
        model=spec.name,
        points=tuple(ForecastPoint(*row) for row in zip(*(c.tolist() for c in cols), strict=True)),
        exhaustion_at=exhaust,
        backtest=None if best is None else Backtest(best.mape, best.mase, holdout),
        exhaustion_hi80_at=exhaust80,
        step_s=step_s,
        history_points=int(series.y.size),
        reason=_reason(spec, best, candidates, step_s, int(series.y.size)),
        candidates=candidates,
        notes=tuple(notes),
    )


def _exhaustion(
    last: tuple[float, float],
    times: Array,
    mean: Array,
    hi80: Array,
    capacity: float | None,
    now: float,
) -> tuple[float | None, float | None]:
    if capacity is None:
        return None, None
    if last[1] >= capacity:
        return now, now
    return _crossing(last, times, mean, capacity), _crossing(last, times, hi80, capacity)


def duration(seconds: float) -> str:
    """``3 h``, ``90 min``, ``2.5 d``: a span as a person says it."""
    for size, unit in ((DAY_S, "d"), (3600.0, "h"), (60.0, "min")):
        if seconds >= 2 * size or (seconds >= size and seconds % size == 0):
            return f"{round(seconds / size, 1):g} {unit}"
    return f"{seconds:g} s"


def history_needed_s(fc: Forecast) -> float:
    """Seconds of history still missing before ``fc`` can be more than flat."""
    if fc.model != INSUFFICIENT:
        return 0.0
    return max(0, MIN_POINTS - fc.history_points) * fc.step_s


def _insufficient(
    series: _Series | None,
    step_s: float,
    end: int,
    capacity: float | None,
    now: float,
    notes: list[str],
) -> Forecast:
    """Flat at the last value; with under ``MIN_POINTS`` steps there is no
    spread to estimate, so the interval collapses onto it."""
    n = 0 if series is None else int(series.y.size)
    # An operator on a fresh server asks "how long until it forecasts?", so
    # the answer is in time, not only in steps.
    reason = (f"{INSUFFICIENT}: {n} step(s) of {duration(step_s)} recorded, a forecast needs "
              f"at least {MIN_POINTS} ({duration(MIN_POINTS * step_s)}); about "
              f"{duration((MIN_POINTS - n) * step_s)} more")
    if series is None:
        return Forecast(INSUFFICIENT, (), None, None, None, step_s, 0, reason, (), tuple(notes))
    value = float(series.y[-1])
    times = (np.arange(series.last + 1, end + 1) * step_s).tolist()
    pts = tuple(ForecastPoint(t, value, value, value, value, value) for t in times)
    exhausted = now if capacity is not None and value >= capacity else None
    return Forecast(
        INSUFFICIENT, pts, exhausted, None, exhausted, step_s, n, reason, (), tuple(notes)
    )
