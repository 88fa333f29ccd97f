"""``RuntimeHistory.record``'s pass over a job's keys, its answers and its
floors compiled (``_replay_c.learn_keys``, ``answer_of``, ``floors_of``)
held to the Python they stand for (``adaptive_parts.learn_keys``,
``RuntimeHistory._answer``, ``RuntimeHistory.floors``, and the levels'
table, ``levels_of``, to ``adaptive._levels_py``), with hypothesis:
two histories fed the same jobs and run times, one through each, asked
the same answers and floors between records, end in the same state after
every record (errors, windows, typical values, floors and their drops,
``shape``) and give the same answers and floors, or raise the same error,
on run times and estimates that are floats, ints, zeros of both signs,
NaN, infinite, huge or -1 (a log error's division by zero).

Skips where the extension was not built (``tests/support.compiled``)."""

from __future__ import annotations

import math
import random
from typing import Any
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apportion.core import fastreplay
from apportion.core.scheduling import adaptive
from apportion.core.scheduling.adaptive import LEVELS, RuntimeHistory
from apportion.core.scheduling.adaptive_parts import _Error
from apportion.core.scheduling.jobs import Job, job
from support import compiled

_replay_c = compiled("apportion.core._replay_c", "the replays' compiled kernels "
                     "(core/_replay_c.pyx)", "the Python loops are")

P = 1000
ODD = [0.0, -0.0, 1, 7, -1.0, -1, 0.5, 1e308, math.inf, math.nan, 3e5]


def drawn_job(rnd: random.Random, name: str) -> Job:
    return job(name, {"cpu": P * rnd.randint(1, 4)},
               user=rnd.choice([None, "ann", "bob"]), name=rnd.choice([None, "sim"]),
               runtime_estimate=rnd.choice([None, 0.5, 60.0, 60, 600.0, 1e5, 0.0, 1e300]))


def state(h: RuntimeHistory) -> Any:
    """What ``learn_keys`` may change, comparable (NaN as its repr)."""
    def same(x: object) -> object:
        return repr(x) if isinstance(x, float) and x != x else x
    return (
        {k: same(v) for k, v in h.typical.items()},
        {k: (same(e.mean), e.count) for k, e in h.errors.items()},
        {k: [same(x) for x in w.kept] for k, w in h.windows.items()},
        {k: [same(x) for x in w.ordered or []] for k, w in h.windows.items()},
        {k: same(v) for k, v in h.floor_cache.items()},
        {k: list(v) for k, v in h.floor_readers.items()},
        list(h.floors_dropped), h.shape, h.keys_gained,
    )


def outcome(h: RuntimeHistory, j: Job, run: float) -> str:
    try:
        h.record(j, run)
    except (ArithmeticError, ValueError) as exc:
        return type(exc).__name__
    return "ok"


def asked_of(h: RuntimeHistory, jobs: list[Job]) -> Any:
    """The answers to ``jobs`` (or the error), NaN as its repr."""
    try:
        found = [h.answer(n) for n in h.numbers(jobs)]
    except (ArithmeticError, ValueError) as exc:
        return type(exc).__name__
    return [tuple(repr(x) if x != x else x for x in pair) for pair in found]


def floors(h: RuntimeHistory, jobs: list[Job]) -> Any:
    try:
        return h.floors(jobs), h.stale_floors()
    except (ArithmeticError, ValueError) as exc:
        return type(exc).__name__


def levels(of: Any, h: RuntimeHistory) -> Any:
    try:
        return of(h, LEVELS)
    except (ArithmeticError, ValueError) as exc:
        return type(exc).__name__


PURE = (mock.patch.object(adaptive, "_learn_keys", None),
        mock.patch.object(adaptive, "_answer_of", None),
        mock.patch.object(adaptive, "_floors_of", None),
        mock.patch.object(adaptive, "_levels_of", None))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=False), st.booleans())
def test_the_compiled_key_pass_changes_what_the_python_one_does(
        rnd: random.Random, odd: bool) -> None:
    assert adaptive._learn_keys is _replay_c.learn_keys is fastreplay.learn_keys
    assert adaptive._answer_of is _replay_c.answer_of is fastreplay.answer_of
    assert adaptive._floors_of is _replay_c.floors_of is fastreplay.floors_of
    assert adaptive._levels_of is _replay_c.levels_of is fastreplay.levels_of
    native, pure = RuntimeHistory(), RuntimeHistory()
    asked = [drawn_job(rnd, f"w{k}") for k in range(8)]
    for n in range(60):
        j = drawn_job(rnd, f"d{n}")
        if odd and rnd.random() < 0.2:
            run: Any = rnd.choice(ODD)
        else:
            run = (j.runtime_estimate or 30.0) * rnd.choice([0.001, 0.1, 1.0, 3.0, 5e3])
        got = outcome(native, j, run)
        with PURE[0], PURE[1], PURE[2], PURE[3]:
            want = outcome(pure, j, run)
        assert got == want
        assert state(native) == state(pure)
        if got != "ok":
            return  # a history left partway through a record is not asked again
        table = levels(_replay_c.levels_of, native)
        assert repr(table) == repr(levels(adaptive._levels_py, native))
        # Floors before answers (an answer taken since the record is given
        # exact), and answers after every other record only.
        got = floors(native, asked)
        with PURE[0], PURE[1], PURE[2], PURE[3]:
            want = floors(pure, asked)
        assert repr(got) == repr(want)
        assert native.floor_levels == pure.floor_levels
        if isinstance(got, str):
            return
        if n % 2:
            continue
        got = asked_of(native, asked)
        with PURE[0], PURE[1], PURE[2], PURE[3]:
            want = asked_of(pure, asked)
        assert got == want
        assert native.sig_best == pure.sig_best
        assert repr(native.user_weights) == repr(pure.user_weights)
        if isinstance(got, str):
            return


def test_int_run_times_take_the_interpreters_arithmetic() -> None:
    native, pure = RuntimeHistory(), RuntimeHistory()
    j = job("a", {"cpu": P}, user="ann", name="sim", runtime_estimate=60.0)
    for run in (3, 4.0, 5, 6):
        native.record(j, run)
        with mock.patch.object(adaptive, "_learn_keys", None):
            pure.record(j, run)
    assert state(native) == state(pure)
    assert native.typical[("user", "ann")] == 5.5


def test_a_weight_that_overflows_raises_as_in_python() -> None:
    h = RuntimeHistory()
    h.errors = {"user": _Error(1e200, 3), "size": _Error(math.inf, 9), "name": _Error(math.nan, 1),
                "queue": _Error(5, 9), "global": _Error(0.0, 9)}
    assert levels(_replay_c.levels_of, h) == levels(adaptive._levels_py, h) == "OverflowError"
    del h.errors["user"]
    assert repr(levels(_replay_c.levels_of, h)) == repr(levels(adaptive._levels_py, h))
