"""Learned resource requests: estimate what a new job will use from what the
same job, the same user, or the same name used before.

Tiers, per predicted key (peak ``memory`` bytes, ``cpu_seconds``,
``gpu_memory`` bytes, ``runtime_s`` seconds, or whatever the records hold):

* ``model`` (>= ``MODEL_MIN_SAMPLES`` past runs): linear quantile regression of
  ``log1p(used)`` on ``log1p`` of the requested amounts and on the caller's
  numeric features, fitted in numpy by iteratively reweighted least squares;
  the prediction is kept inside the range the history has seen, then raised by
  ``margin``.
* ``robust`` (>= ``ROBUST_MIN_SAMPLES``): the ``quantile`` of past use plus
  ``margin``.
* ``request``: the job's own request (``cpu_seconds`` is implied by cpu and
  runtime requests), when there is too little history.
* ``few_runs``: without a request, the most that the 1 to 4 runs there are
  used, plus ``margin``: one 31 s run says more than a default of an hour.
* ``default``: ``DEFAULT_USAGE`` when there is neither.

History is searched from the most specific key to the broadest: name + user +
command, name + user, user, name; the first with enough runs for a key is the
basis. A prediction above the request is capped at it (a job is stopped at
its limit), and a prediction below the most this job (same name, user and,
when given, command) ever used is raised to that, but never above the
request: the user's own figure is the ceiling. A note says each;
``clamp_to_max_used=False`` keeps the lower value and only notes it.

``confidence`` is the Laplace-smoothed share of the basis runs whose use the
predicted value would have covered: (covered + 1) / (runs + 2), so 0.5 with no
history at all.

Pure: no clock, no randomness; history and the new job are passed in.
"""

from __future__ import annotations

import math
from collections import defaultdict, deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from apportion.core.errors import InvalidInput
from apportion.core.resources import format_human

Array = NDArray[np.float64]
Tier = Literal["model", "robust", "request", "few_runs", "default"]

MODEL_MIN_SAMPLES = 30
ROBUST_MIN_SAMPLES = 5
MAX_SAMPLES = 1000
"""The most recent runs used per basis: old runs describe old code and inputs."""
TIER_ORDER: tuple[Tier, ...] = ("model", "robust", "request", "few_runs", "default")
BASE_KEYS = ("memory", "cpu_seconds", "runtime_s")
DEFAULT_USAGE: Mapping[str, int] = MappingProxyType(
    {"memory": 1 << 30, "cpu_seconds": 3600, "gpu_memory": 0, "runtime_s": 3600}
)


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """What one finished task asked for and what it used."""

    name: str
    user: str
    command: str | None
    requested: Mapping[str, int]
    used: Mapping[str, int]
    finished_at: float
    features: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class KeyPrediction:
    value: int
    tier: Tier
    samples: int
    basis: str | None
    """Which history key the value rests on ("name+user", "user", ...)."""
    confidence: float


@dataclass(frozen=True, slots=True)
class Prediction:
    """``tier``, ``samples`` and ``confidence`` describe the weakest key (the
    lowest tier, fewest runs, least coverage); ``detail`` has every key."""

    values: dict[str, int]
    tier: Tier
    samples: int
    confidence: float
    notes: tuple[str, ...]
    detail: dict[str, KeyPrediction]


@dataclass(frozen=True, slots=True)
class _Job:
    name: str
    user: str
    command: str | None
    requested: Mapping[str, int]
    features: Mapping[str, float]


@dataclass(frozen=True, slots=True)
class _Settings:
    quantile: float
    margin: float
    defaults: Mapping[str, int]
    clamp_to_max_used: bool
    cap_at_request: bool


def predict(
    history: Sequence[UsageRecord],
    *,
    name: str,
    user: str,
    command: str | None = None,
    requested: Mapping[str, int] | None = None,
    features: Mapping[str, float] | None = None,
    quantile: float = 0.95,
    margin: float = 0.1,
    keys: Sequence[str] | None = None,
    defaults: Mapping[str, int] = DEFAULT_USAGE,
    clamp_to_max_used: bool = True,
    cap_at_request: bool = True,
    max_samples: int = MAX_SAMPLES,
) -> Prediction:
    """Estimate each of ``keys`` (default: memory, cpu_seconds, runtime_s,
    gpu_memory when a gpu is requested, and whatever the history recorded)."""
    if not 0 < quantile < 1:
        raise InvalidInput("quantile: must be between 0 and 1", field="quantile")
    if margin < 0:
        raise InvalidInput("margin: must be >= 0", field="margin")
    job = _Job(name, user, command, dict(requested or {}), dict(features or {}))
    settings = _Settings(quantile, margin, defaults, clamp_to_max_used, cap_at_request)
    levels = _levels(history, job, max_samples)
    # "This job" is the most specific key: with a command, runs of that command.
    same_job = levels[0][1]
    wanted = list(keys) if keys is not None else _default_keys(job, levels)
    notes: list[str] = []
    detail = {key: _predict_key(key, job, levels, same_job, settings, notes) for key in wanted}
    weakest = max(detail.values(), key=lambda d: TIER_ORDER.index(d.tier), default=None)
    return Prediction(
        values={k: d.value for k, d in detail.items()},
        tier=weakest.tier if weakest else "default",
        samples=min((d.samples for d in detail.values()), default=0),
        confidence=min((d.confidence for d in detail.values()), default=0.5),
        notes=tuple(notes),
        detail=detail,
    )


def _levels(
    history: Sequence[UsageRecord], job: _Job, max_samples: int
) -> list[tuple[str, list[UsageRecord]]]:
    """History by key, most specific first, each the most recent runs."""
    ordered = sorted(history, key=lambda r: r.finished_at)
    mine = [r for r in ordered if r.user == job.user]
    same = [r for r in mine if r.name == job.name]
    levels: list[tuple[str, list[UsageRecord]]] = []
    if job.command is not None:
        levels.append(("name+user+command", [r for r in same if r.command == job.command]))
    levels.append(("name+user", same))
    levels.append(("user", mine))
    levels.append(("name", [r for r in ordered if r.name == job.name]))
    return [(level, recs[-max_samples:]) for level, recs in levels]


def _default_keys(job: _Job, levels: list[tuple[str, list[UsageRecord]]]) -> list[str]:
    keys = list(BASE_KEYS)
    if job.requested.get("gpu", 0) > 0:
        keys.append("gpu_memory")
    for _, recs in levels:
        for rec in recs:
            keys.extend(k for k in rec.used if k not in keys)
    return keys


def _predict_key(
    key: str,
    job: _Job,
    levels: list[tuple[str, list[UsageRecord]]],
    same_job: list[UsageRecord],
    settings: _Settings,
    notes: list[str],
) -> KeyPrediction:
    estimate = _estimate(key, job, levels, settings)
    value = estimate.value
    asked = job.requested.get(key)
    capped = settings.cap_at_request and asked is not None
    if capped and asked is not None and value > asked:
        notes.append(f"{key}: {_show(key, value)} capped at the request {_show(key, asked)} "
                     "(the job is stopped there)")
        value = asked
    if estimate.tier == "few_runs":
        notes.append(f"{key}: {_show(key, value)}, the most {estimate.samples} earlier run(s) "
                     f"used plus {settings.margin:.0%} (statistics need "
                     f"{ROBUST_MIN_SAMPLES} runs)")
    used_before = [r.used[key] for r in same_job if key in r.used]
    if used_before and value < (peak := max(used_before)):
        runs = len(used_before)
        if capped and asked is not None and peak > asked:
            notes.append(f"{key}: kept at the request {_show(key, asked)}, although this job "
                         f"used up to {_show(key, peak)} in {runs} earlier run(s)")
        elif settings.clamp_to_max_used:
            notes.append(f"{key}: raised from {_show(key, value)} to {_show(key, peak)}, the "
                         f"most this job used in {runs} earlier run(s)")
            value = peak
        else:
            notes.append(f"{key}: {_show(key, value)} is below the {_show(key, peak)} this job "
                         f"used in one of {runs} earlier run(s)")
    if value != estimate.value:
        past = _samples(key, levels, estimate.basis)
        estimate = KeyPrediction(
            value, estimate.tier, estimate.samples, estimate.basis, _coverage(past, value)
        )
    return estimate


def _samples(key: str, levels: list[tuple[str, list[UsageRecord]]], basis: str | None) -> Array:
    """Past use of ``key`` at the basis level; without a basis (too few runs
    anywhere), at the most specific level that has any."""
    for level, recs in levels:
        values = [r.used[key] for r in recs if key in r.used]
        if level == basis or (basis is None and values):
            return np.array(values, dtype=np.float64)
    return np.zeros(0)


def _estimate(
    key: str, job: _Job, levels: list[tuple[str, list[UsageRecord]]], settings: _Settings
) -> KeyPrediction:
    for level, recs in levels:
        runs = [r for r in recs if key in r.used]
        if len(runs) >= MODEL_MIN_SAMPLES:
            return _model(key, job, runs, level, settings)
        if len(runs) >= ROBUST_MIN_SAMPLES:
            past = np.array([r.used[key] for r in runs], dtype=np.float64)
            value = _ceil(float(np.quantile(past, settings.quantile)) * (1 + settings.margin))
            return KeyPrediction(value, "robust", len(runs), level, _coverage(past, value))
    # Too little history for statistics; the few runs there are still judge
    # the request or default through the confidence figure.
    past = _samples(key, levels, None)
    asked = _from_request(key, job.requested)
    if asked is not None:
        return KeyPrediction(asked, "request", past.size, None, _coverage(past, asked))
    if past.size:
        value = _ceil(float(past.max()) * (1 + settings.margin))
        return KeyPrediction(value, "few_runs", past.size, None, _coverage(past, value))
    value = settings.defaults.get(key, 0)
    return KeyPrediction(value, "default", past.size, None, _coverage(past, value))


def _show(key: str, value: int) -> str:
    """An amount in a note as a person reads it: ``2Gi``, not 2147483648."""
    if key == "runtime_s":
        return f"{value}s"
    if key == "cpu_seconds":
        return f"{value} cpu-s"
    return format_human(key, value)


def _from_request(key: str, requested: Mapping[str, int]) -> int | None:
    if key in requested:
        return requested[key]
    if key == "cpu_seconds" and "cpu" in requested and "runtime_s" in requested:
        # cpu is in millicores: a full allotment kept busy for the whole run.
        return _ceil(requested["cpu"] / 1000 * requested["runtime_s"])
    return None


def _coverage(past: Array, value: float) -> float:
    return (int((past <= value).sum()) + 1) / (int(past.size) + 2)


def _ceil(value: float) -> int:
    return max(0, math.ceil(value - 1e-9))


# -- quantile regression --------------------------------------------------------


def _design(
    records: Sequence[UsageRecord | _Job], req_keys: Sequence[str], feat_keys: Sequence[str]
) -> Array:
    rows = [
        [math.log1p(max(r.requested.get(k, 0), 0)) for k in req_keys]
        + [float(r.features.get(f, 0.0)) for f in feat_keys]
        for r in records
    ]
    return np.array(rows, dtype=np.float64).reshape(len(records), len(req_keys) + len(feat_keys))


def _model(
    key: str, job: _Job, runs: list[UsageRecord], level: str, settings: _Settings
) -> KeyPrediction:
    req_keys = sorted(job.requested)
    feat_keys = sorted(job.features)
    x = _design(runs, req_keys, feat_keys)
    x_new = _design([job], req_keys, feat_keys)
    # Constant columns carry nothing and make the normal equations singular;
    # scaling the rest keeps the reweighted solves well conditioned.
    centre, spread = x.mean(axis=0), x.std(axis=0)
    varying = spread > 1e-12
    z = (x[:, varying] - centre[varying]) / spread[varying]
    z_new = (x_new[:, varying] - centre[varying]) / spread[varying]
    design = np.hstack([np.ones((z.shape[0], 1)), z])
    y = np.log1p(np.array([max(r.used[key], 0) for r in runs], dtype=np.float64))
    coef = quantile_regression(design, y, settings.quantile)
    lo, hi = float(y.min()), float(y.max())
    # A line extrapolates without bound; a new job outside the seen requests
    # gets the edge of what was ever used, not a guess beyond it.
    fitted = np.clip(design @ coef, lo, hi)
    guess = float(np.clip(np.hstack([1.0, z_new[0]]) @ coef, lo, hi))
    scale = 1 + settings.margin
    value = _ceil(math.expm1(guess) * scale)
    used = np.expm1(y)
    covered = int((used <= np.expm1(fitted) * scale + 1e-9).sum())
    return KeyPrediction(value, "model", len(runs), level, (covered + 1) / (len(runs) + 2))


def quantile_regression(
    x: Array, y: Array, quantile: float, *, iterations: int = 50, tol: float = 1e-4
) -> Array:
    """Linear quantile regression by iteratively reweighted least squares:
    the check loss |r| * (q or 1-q) equals a squared loss weighted by
    (q or 1-q) / |r|, so each step is one weighted least-squares solve."""
    ridge = 1e-8 * np.eye(x.shape[1])
    coef = np.asarray(np.linalg.lstsq(x, y, rcond=None)[0], dtype=np.float64)
    floor = 1e-6 * max(float(np.abs(y).mean()), 1.0)
    for _ in range(iterations):
        resid = y - x @ coef
        weight = np.where(resid >= 0, quantile, 1 - quantile) / np.maximum(np.abs(resid), floor)
        xw = x * weight[:, None]
        new = np.asarray(np.linalg.solve(x.T @ xw + ridge, xw.T @ y), dtype=np.float64)
        done = float(np.max(np.abs(new - coef))) < tol
        coef = new
        if done:
            break
    return coef


# -- trace replay (for the simulator and the benchmark) ---------------------------


@dataclass(frozen=True, slots=True)
class TraceJob:
    """A job from a trace, with what it really did. ``requested`` may hold
    ``runtime_s`` (the user's own estimate) and other request keys."""

    id: str
    user: str
    name: str
    submit_time: float
    finished_at: float
    runtime_s: int
    requested: Mapping[str, int] = field(default_factory=dict)
    command: str | None = None


def replay(
    jobs: Sequence[TraceJob],
    *,
    history_limit: int = 500,
    quantile: float = 0.95,
    margin: float = 0.1,
    clamp_to_max_used: bool = True,
) -> Iterator[tuple[TraceJob, Prediction]]:
    """Predict each job's run time, in submit order, from the runs of the same
    user that had finished (by the trace's own times) when it was submitted."""
    by_submit = sorted(jobs, key=lambda j: (j.submit_time, j.id))
    by_end = sorted(jobs, key=lambda j: (j.finished_at, j.id))
    history: defaultdict[str, deque[UsageRecord]] = defaultdict(
        lambda: deque(maxlen=history_limit)
    )
    done = 0
    for job in by_submit:
        while done < len(by_end) and by_end[done].finished_at <= job.submit_time:
            ended = by_end[done]
            history[ended.user].append(_record(ended))
            done += 1
        prediction = predict(
            list(history[job.user]),
            name=job.name,
            user=job.user,
            command=job.command,
            requested=job.requested,
            quantile=quantile,
            margin=margin,
            keys=("runtime_s",),
            clamp_to_max_used=clamp_to_max_used,
        )
        yield job, prediction


def _record(job: TraceJob) -> UsageRecord:
    return UsageRecord(
        job.name, job.user, job.command, job.requested, {"runtime_s": job.runtime_s},
        job.finished_at,
    )


def runtime_estimates(
    jobs: Sequence[TraceJob],
    *,
    quantile: float = 0.95,
    margin: float = 0.1,
    clamp_to_max_used: bool = True,
) -> dict[str, int]:
    """Job id -> predicted run time (seconds), for a simulator to hand its
    backfill and adaptive order instead of the users' estimates. Each value
    uses only jobs that had finished, by the trace's times, at its submit."""
    return {
        job.id: p.values["runtime_s"]
        for job, p in replay(
            jobs, quantile=quantile, margin=margin, clamp_to_max_used=clamp_to_max_used
        )
    }
