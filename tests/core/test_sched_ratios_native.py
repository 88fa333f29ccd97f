"""The replays' compiled kernels (``core/_replay_c.pyx``) held to the
Python they stand for, with hypothesis: the hrrn values
(``hrrn_values``, which ``adaptive_queue._Kept.plain`` calls) and the
merge's next group (``hrrn_top``), the learned queue's order
(``hrrn_ranked``, ``LearnedQueue._ranked``) and the conservative scan
(``count_place``, which ``CountProfile.place`` calls): the same floats
(NaN, infinite and signed zeros included), the same "not plain" or the
same error; the same start and the same profile after each placement, on
steps that are floats and counts that are ints and on items the C code
hands back to Python (ints, counts past 2**62, a float count, a zero ``e``).

Where the extension was not built (no C compiler at install) these tests
skip, saying so; in CI (``CI=true``) that fails instead, so CI tests what is
shipped. ``APPORTION_NO_NATIVE=1`` hides it on purpose (``tests/conftest.py``):
they skip then too.
"""

from __future__ import annotations

import math
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apportion.core import countprofile, fastreplay, pool_adaptive
from apportion.core.countprofile import CountProfile
from apportion.core.scheduling import adaptive_queue
from support import compiled

_replay_c = compiled("apportion.core._replay_c", "the replays' compiled kernels "
                     "(core/_replay_c.pyx)", "the Python loops are")
count_place, hrrn_ranked = _replay_c.count_place, _replay_c.hrrn_ranked
hrrn_top, hrrn_values = _replay_c.hrrn_top, _replay_c.hrrn_values

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
INF = math.inf
NAN = math.nan


def plain_values(now: Any, heads: list[Any], es: list[Any], signs: list[Any]
                 ) -> list[float] | None:
    """``_Kept.plain``'s values as written in Python (None: not plain)."""
    if max(heads) > now:
        return None
    values = [((now - s) + e) / e * sign for s, e, sign in zip(heads, es, signs, strict=True)]
    total = sum(values)
    return values if total == total and total != -INF else None


def test_the_replays_use_the_compiled_kernels() -> None:
    assert fastreplay.NATIVE
    assert adaptive_queue._hrrn_values is hrrn_values and adaptive_queue._hrrn_top is hrrn_top
    assert pool_adaptive._hrrn_ranked is hrrn_ranked
    assert countprofile._count_place is count_place


def same(a: list[float] | None, b: list[float] | None) -> bool:
    """Equal lists of floats, NaN for NaN and each zero's sign alike."""
    if a is None or b is None:
        return a is b
    return len(a) == len(b) and all(
        (x != x and y != y) or (x == y and math.copysign(1.0, x) == math.copysign(1.0, y))
        for x, y in zip(a, b, strict=True))


floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                   st.sampled_from([0.0, -0.0, 1.0, 1e300, 5e-324]))
groups = st.lists(st.tuples(
    st.one_of(floats, st.integers(-10, 10)),
    st.one_of(st.floats(1.0, 1e9), st.sampled_from([1.0, INF, NAN, 0.0, -0.0, -1.0, 0]),
              st.integers(1, 5)),
    st.sampled_from([-1.0, -1.0 - 2.0**-40, INF, 1, -1, -2, 0.0])), min_size=1, max_size=30)


def outcome(f: Any, *args: Any) -> Any:
    """What ``f(*args)`` returns, or the type of what it raises."""
    try:
        return f(*args)
    except (ZeroDivisionError, ValueError) as error:
        return type(error)


@SETTINGS
@given(st.one_of(floats, st.integers(-10, 10)), groups)
def test_hrrn_values_are_the_comprehensions_floats(now: Any, rows: list[Any]) -> None:
    # False: the values are Python's to compute (``_Kept.plain`` then runs
    # its comprehension), which happens where an item is not a float or an
    # ``e`` is zero, and nowhere else.
    heads, es, signs = (list(col) for col in zip(*rows, strict=True))
    got = hrrn_values(now, heads, es, signs)
    want = outcome(plain_values, now, heads, es, signs)
    items = [now, *heads, *es, *signs]
    if got is False:
        assert any(type(x) is not float for x in items) or 0.0 in es
    elif isinstance(want, type):
        raise AssertionError(f"{got} where Python raises {want.__name__}")
    else:
        assert same(got, want)


def test_hrrn_values_literal_cases() -> None:
    assert hrrn_values(10.0, [4.0, 10.0], [2.0, 1.0], [-1.0, -1.0]) == [-4.0, -1.0]
    assert hrrn_values(10.0, [4.0, 11.0], [2.0, 1.0], [-1.0, -1.0]) is None  # a head after now
    assert hrrn_values(10.0, [4.0], [INF], [-1.0]) is None  # NaN
    assert hrrn_values(10.0, [4.0, 5.0], [2.0, 1.0], [-1.0, INF]) == [-4.0, INF]
    # ``max`` keeps a leading NaN head, which then is not after now.
    assert same(hrrn_values(3.0, [NAN, 5.0], [1.0, 1.0], [-1.0, -1.0]),
                plain_values(3.0, [NAN, 5.0], [1.0, 1.0], [-1.0, -1.0]))
    # Python's: a zero's sign from an int sign, a division by zero.
    assert hrrn_values(0.0, [-1.0], [-1.0], [-1]) is False
    assert same(plain_values(0.0, [-1.0], [-1.0], [-1]), [0.0])
    assert hrrn_values(10.0, [4.0, 5.0], [2.0, 0.0], [-1.0, -1.0]) is False
    assert hrrn_values(10.0, [4.0, 11.0], [2.0, 0.0], [-1.0, -1.0]) is None  # max first


def test_plain_takes_python_values_where_the_kernel_hands_back() -> None:
    kept = adaptive_queue._Kept.__new__(adaptive_queue._Kept)
    kept.heads, kept.es, kept.signs = [-1.0], [-1.0], [-1]
    assert kept.plain(0.0) and same(kept.values, [0.0])
    kept.es = [0.0]
    with pytest.raises(ZeroDivisionError):
        kept.plain(0.0)


@st.composite
def profiles(draw: st.DrawFn) -> tuple[list[Any], list[Any], list[Any]]:
    """Steps (instants rising, some ints or NaN), counts (some past 2**62 or
    floats) and asks (need, duration, idle, first only, start step)."""
    n = draw(st.integers(1, 10))
    t = draw(st.sampled_from([0.0, 10.0, -1e17]))
    times: list[Any] = []
    for _ in range(n):
        t += draw(st.sampled_from([0.0, 1.0, 5.0, 12.5, 1e-9]))
        times.append(draw(st.sampled_from([t, t, t, t, int(t), NAN])) if times else t)
    times = [x for k, x in enumerate(times) if k == 0 or not x <= times[k - 1]] or [t]
    big = 2**62
    free = [draw(st.sampled_from([0, 1, 2, 3, 5, 8, -1, big, 2.0]))
            for _ in range(len(times))]
    asks = draw(st.lists(st.tuples(
        st.sampled_from([0, 1, 2, 3, 5, big]),
        st.sampled_from([None, 0.0, 1.0, 5.0, 12.5, 60.0, -3.0, 1e-300, INF, NAN, 7]),
        st.sampled_from([0, 1, 3, 12]), st.booleans(), st.integers(0, 12)), max_size=8))
    return times, free, asks


@SETTINGS
@given(profiles())
def test_count_place_is_the_python_scan(case: tuple[list[Any], list[Any], list[Any]]) -> None:
    times, free, asks = case
    native = CountProfile.__new__(CountProfile)
    python = CountProfile.__new__(CountProfile)
    native.times, native.free = list(times), list(free)
    python.times, python.free = list(times), list(free)
    for need, duration, idle, first_only, at in asks:
        after = python.times[min(at, len(python.times) - 1)] if at else None
        with mock.patch.object(countprofile, "_count_place", None):
            try:
                want: Any = python.place(need, duration, idle, first_only, after)
            except TypeError as error:  # a float count inserted where Python fails too
                want = error
        try:
            got: Any = native.place(need, duration, idle, first_only, after)
        except TypeError as error:
            got = error
        if isinstance(want, Exception):
            assert type(got) is type(want)
        else:
            assert same([got], [want]) if got is not None else want is None
        # After an error too: a scan that fails changes the same steps.
        assert same(native.times, python.times)
        assert native.free == python.free


def test_count_place_literal_cases() -> None:
    times, free = [0.0, 5.0, 10.0], [1, 3, 4]
    assert count_place(times, free, 3, 5.0, 1, False, 0) == 5.0
    assert (times, free) == ([0.0, 5.0, 10.0], [1, 0, 4])
    times, free = [0.0, 5.0], [2, 3]
    assert count_place(times, free, 2, 2.5, 1, False, 0) == 5.0  # idle short of now
    assert (times, free) == ([0.0, 5.0, 7.5], [2, 1, 3])
    assert count_place([0.0, 5.0], [2, 3], 2, 2.5, 1, True, 0) is None
    assert count_place([0, 5.0], [2, 3], 2, 2.5, 2, False, 0) is False  # an int instant
    assert count_place([0.0], [2**62], 1, 1.0, 2, False, 0) is False  # a count past 2**62
    assert count_place([0.0], [2], 1, 7, 2, False, 0) is False  # an int duration


answers_of = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 5),
                       st.none(), st.sampled_from([0.5, 1.0, 2.0]))


@SETTINGS
@given(st.one_of(floats, st.integers(-10, 10)),
       st.lists(st.tuples(st.one_of(floats, st.integers(-10, 10)), st.integers(0, 5),
                          st.integers(1, 4)), max_size=25),
       st.lists(st.tuples(answers_of, answers_of), min_size=6, max_size=6),
       st.sets(st.integers(0, 5)))
def test_hrrn_ranked_is_the_learned_queues_loop(
        now: Any, rows: list[tuple[Any, int, int]], table: list[tuple[Any, Any]],
        known: set[int]) -> None:
    fifo: list[Any] = [(submit, f"j{k}", number, need, None)
                       for k, (submit, number, need) in enumerate(rows)]

    def run(compiled: bool) -> tuple[Any, list[int]]:
        answers = {n: table[n] for n in known}
        asked: list[int] = []

        def answer(number: int) -> tuple[Any, Any]:
            asked.append(number)
            found = answers[number] = table[number]
            return found

        queue = pool_adaptive.LearnedQueue.__new__(pool_adaptive.LearnedQueue)
        queue._history = mock.Mock(answers=answers, answer=answer)
        with mock.patch.object(pool_adaptive, "_hrrn_ranked",
                               hrrn_ranked if compiled else None):
            return queue._ranked(now, fifo), asked

    got, want = run(True), run(False)
    assert got[1] == want[1]  # the same answers asked for, in the same order
    # The same entries (the estimates are the table's own objects: equality
    # holds for a NaN one by identity).
    assert got[0] == want[0]
    # And the same raw values, each zero's sign and NaN alike.
    answers = {n: table[n] for n in known}
    raw = hrrn_ranked(now, fifo, dict(answers), lambda n: table[n])
    plain = pool_adaptive._rated(now, fifo, dict(answers), lambda n: table[n])
    assert raw[:2] == plain[:2]
    assert same(raw[2], plain[2])


def python_top(values: list[Any]) -> int:
    """What ``_Kept.merge`` reads from ``min``, ``index`` and ``count``, in
    ``hrrn_top``'s terms (-1: the merge ends; -2: a tie)."""
    v = min(values)
    if v == INF:
        return -1
    return values.index(v) if values.count(v) == 1 else -2


@SETTINGS
@given(st.lists(st.one_of(floats, st.sampled_from([-1.0, -2.0, -2.0, INF]), st.integers(-3, 0)),
                min_size=1, max_size=30))
def test_hrrn_top_is_min_index_and_count(values: list[Any]) -> None:
    got = hrrn_top(values)
    if got != -3:  # -3: the caller asks Python
        assert got == python_top(values)
    else:
        assert any(type(x) is not float for x in values) or values[0] != values[0]


def test_hrrn_top_literal_cases() -> None:
    assert hrrn_top([-3.0, -5.0, NAN, -4.0]) == 1
    assert hrrn_top([-3.0, -5.0, -5.0]) == -2
    assert hrrn_top([INF, INF]) == -1
    assert hrrn_top([NAN, -5.0]) == -3  # ``min`` keeps a leading NaN
    assert hrrn_top([-1, -5.0]) == -3
