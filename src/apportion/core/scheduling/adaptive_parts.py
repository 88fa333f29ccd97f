"""The ``adaptive`` strategy's parts that hold no history: the levels, the
settings, the running mean of errors, a signature's facts, the levels' table and
the pure helpers (the design is in ``adaptive``'s docstring; split from it to
keep each module under 600 lines)."""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from apportion.core.scheduling.jobs import Job

LEVELS = ("user+name", "user", "name", "queue", "size", "global")
"""Where a run time is learned, most specific first."""

CORRECTION_STEPS = (60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 18000.0, 36000.0,
                    72000.0, 180000.0, 360000.0)
"""Tsafrir et al.'s gradual increments (1 min ... 100 h, then 100 h again): a
job that outruns its prediction is next expected at the following rung."""

_SLACK = 4096
"""Entries the per-job caches may hold beyond the jobs in play before they
are swept (a job cancelled while pending or running is never recorded)."""

_UNKNOWN: Any = object()

_TAME = 1e300
"""Values learned from below this (in size) keep every error finite."""

_FLOOR_S = 1.0
"""Added to both sides of a log error, so a 0-second run does not dominate."""

_EXACT = 0.01
"""A mean log error this small (1 %) counts as exact when weighing guesses.
An exact estimate (a log's stand-in, the run time itself) must keep nearly
all the weight: with a floor of 5 % a poor learned value still pulled it
off by a few tenths of a percent, hours on Philly's week-long jobs."""


def size_class(job: Job) -> int:
    """The job's largest request in devices or processors (gpu if asked,
    else cpu in whole cores), rounded up to a power of two."""
    total = job.total
    gpus = total.get("gpu", 0)
    amount = gpus if gpus else -(-total.get("cpu", 0) // 1000)
    return 1 << max(0, int(amount) - 1).bit_length()


@dataclass(frozen=True, slots=True)
class LearnSettings:
    min_runs: Mapping[str, int] = field(default_factory=lambda: {
        "user+name": 2, "user": 2, "name": 3, "queue": 8, "size": 8, "global": 8})
    """Runs a level needs before it is used (the evidence rule)."""
    depth: Mapping[str, int] = field(default_factory=lambda: {
        "user+name": 2, "user": 2, "name": 2, "queue": 32, "size": 32, "global": 32})
    """Recent runs kept per key: two where the runs are one user's (Tsafrir),
    more for the broad levels, where the median of a window is used."""
    max_error: float = math.log(8.0)
    """A level whose mean log error is above this (off by more than 8x on
    average) is too poor to plan on."""
    smoothing: float = 0.02
    """Weight of the newest job in the running mean of each error."""


@dataclass(slots=True)
class _Error:
    """A running mean of log errors (exponentially weighted)."""

    mean: float = 0.0
    count: int = 0

    def add(self, value: float, smoothing: float) -> None:
        self.count += 1
        weight = 1.0 / self.count
        if weight < smoothing:
            weight = smoothing
        self.mean += weight * (value - self.mean)


def _log_error(predicted: float, actual: float) -> float:
    return abs(math.log((predicted + _FLOOR_S) / (actual + _FLOOR_S)))


class _Facts:
    """A signature's part of its answer: its keys by level, the user's
    estimate (and its log) and the name of its user's error. Read-only once
    built (a plain class: one is built per new signature, and a frozen
    dataclass's construction showed in the profile)."""

    __slots__ = ("given", "keys", "log_given", "user")

    def __init__(self, keys: Mapping[str, tuple[str, object]], given: float | None,
                 log_given: float | None, user: str) -> None:
        self.keys = keys
        self.given = given
        self.log_given = log_given
        self.user = user


def _facts(job: Job, keys: list[tuple[str, object]]) -> _Facts:
    given = job.runtime_estimate
    # None where the log does not exist: ``_answer`` then raises as it did.
    log_given = math.log(given + _FLOOR_S) if given is not None and given > -_FLOOR_S else None
    return _Facts({key[0]: key for key in keys}, given, log_given, f"user:{job.user or ''}")


class _Levels:
    """The levels as the last ``record`` left them: in the order a job's
    learned value is taken (lowest mean error first, the most specific on
    a tie, those never scored last), the poor ones, each scored level's
    weight against the user's estimate, and per user error name the weight
    of that user's estimates (filled as asked). Built once per ``record``
    (a plain class: a frozen dataclass costs more to build than it saves)."""

    __slots__ = ("order", "poor", "users", "weight")

    def __init__(self, order: tuple[str, ...], poor: frozenset[str],
                 weight: dict[str, float]) -> None:
        self.order = order
        self.poor = poor
        self.weight = weight
        self.users: dict[str, float | None] = {}


class _Window:
    """One key's recent runs (``kept``), sorted too where deeper than two
    (``ordered``, else None), with its depth and the runs it needs before
    it predicts (a plain class: ``record`` reads these for every key)."""

    __slots__ = ("depth", "kept", "min_runs", "ordered")

    def __init__(self, kept: deque[float], ordered: list[float] | None, min_runs: int) -> None:
        self.kept = kept
        self.ordered = ordered
        self.depth = kept.maxlen
        self.min_runs = min_runs

    def take(self, run: float) -> float | None:
        """Add ``run`` (a full window lets its oldest go); the key's typical
        value where it now has the runs to predict, else None."""
        kept, ordered = self.kept, self.ordered
        if ordered is not None:
            if len(kept) == self.depth:
                del ordered[bisect_left(ordered, kept[0])]
            insort(ordered, run)
        kept.append(run)
        n = len(kept)
        if n < self.min_runs:
            return None
        # ``_typical(kept, ordered)``, without a second call: six keys a
        # record (``tests/core/test_sched_adaptive_order.py`` holds each
        # key's value to ``_typical`` of its window).
        if n <= 2:
            return sum(kept) / n
        if ordered is None:
            ordered = sorted(kept)
        mid = n // 2
        return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2


class _Learner(Protocol):
    """What ``learn_keys`` reads and writes of a ``RuntimeHistory``."""

    settings: LearnSettings
    typical: dict[tuple[str, object], float]
    errors: dict[str, _Error]
    windows: dict[tuple[str, object], _Window]
    floor_readers: dict[tuple[str, object], list[int]]
    floor_cache: dict[int, float]
    floors_dropped: list[int]
    shape: int
    keys_gained: int

    def _error(self, name: str) -> _Error: ...
    def _window(self, key: tuple[str, object]) -> _Window: ...


def learn_keys(history: _Learner, keys: list[tuple[str, object]], run_time: float) -> None:
    """``RuntimeHistory.record``'s pass over a finished job's keys (compiled
    as ``_replay_c.learn_keys``, held to this by
    ``tests/core/test_sched_learn_native.py``). One pass: a key's error is
    scored against its typical value before its window takes the run, and
    each key is its own level, so no key reads what another one's turn
    wrote."""
    typical, errors, smoothing = history.typical, history.errors, history.settings.smoothing
    windows, readers = history.windows, history.floor_readers
    actual = run_time + _FLOOR_S  # ``_log_error``'s, once
    for key in keys:
        value = typical.get(key)
        if value is not None:
            err = errors.get(key[0]) or history._error(key[0])
            # ``_Error.add`` of ``_log_error(value, run_time)`` inline:
            # five levels or so at every finished job.
            err.count += 1
            weight = 1.0 / err.count
            if weight < smoothing:
                weight = smoothing
            err.mean += weight * (abs(math.log((value + _FLOOR_S) / actual)) - err.mean)
        window = windows.get(key)
        if window is None:
            window = history._window(key)
        new = window.take(run_time)
        if new is None:
            continue
        if value is None:
            history.shape += 1
            history.keys_gained += 1
        typical[key] = new
        # A floor reads the value alone: a window's median that stays put
        # keeps its readers' floors.
        if readers and new != value:  # none unless an hrrn queue asks for floors
            dropped = readers.pop(key, None)
            if dropped is not None:
                for number in dropped:
                    history.floor_cache.pop(number, None)
                history.floors_dropped += dropped


def _ladder() -> Iterator[float]:
    yield from CORRECTION_STEPS
    while True:
        yield CORRECTION_STEPS[-1]


def _typical(kept: Sequence[float], ordered: Sequence[float] | None = None) -> float:
    """The mean of up to two runs, else the median (``ordered``: ``kept``
    already sorted)."""
    if len(kept) <= 2:
        return sum(kept) / len(kept)
    if ordered is None:
        ordered = sorted(kept)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _keys(job: Job) -> list[tuple[str, object]]:
    keys: list[tuple[str, object]] = []
    if job.user is not None:
        if job.name is not None:
            keys.append(("user+name", (job.user, job.name)))
        keys.append(("user", job.user))
    if job.name is not None:
        keys.append(("name", job.name))
    keys.append(("queue", job.queue))
    keys.append(("size", size_class(job)))
    keys.append(("global", None))
    return keys


def _moved(old: tuple[str, ...], new: tuple[str, ...]) -> set[str]:
    """The levels from the first place where the orders ``old`` and ``new``
    differ on: a job is predicted from the first level in the order where
    one of its keys has a typical value, so where that level stands before
    the first difference (and no key gained a value), it still is."""
    for at, (was, now) in enumerate(zip(old, new, strict=True)):
        if was != now:
            return set(old[at:])
    return set()
