# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# distutils: extra_compile_args = -ffp-contract=off -fno-fast-math
"""The replays' hot loops compiled (Cython): the adaptive queues' response
ratios (``adaptive_queue._Kept``'s values and next group,
``pool_adaptive.LearnedQueue``'s order) and the conservative count
profile's scan (``countprofile.CountProfile.place``).

Each kernel gives the floats and answers the Python it stands for gives
(IEEE doubles, no contraction or fast math), and hands back (False, or -3)
where it cannot be that Python: an item that is not an exact float or a
small int, a division by zero; the caller then runs its own Python.
``tests/core/test_sched_ratios_native.py`` holds each to that Python.

Built by ``setup.py`` beside the compiled free index (optional: without a
compiler ``core/fastreplay.py`` falls back to the Python). bench/README.md,
h28-adaptive, has the figures.
"""

from libc.math cimport INFINITY
from cpython.float cimport PyFloat_AS_DOUBLE
from cpython.long cimport PyLong_AsLongLongAndOverflow


def hrrn_values(now, list heads, list es, list signs):
    """``adaptive_queue._Kept.plain``'s values on C doubles: per group
    ``((now - head) + e) / e * sign``, or None where a head is after
    ``now`` or the values' sum is NaN or -inf (``plain`` is False). Each
    value is the float Python computes (IEEE doubles, no contraction:
    ``-ffp-contract=off``), and the sum is taken in the same order as
    ``sum``. False where the values are the interpreter's to compute
    (``plain``'s comprehension, in Python): an item that is not an exact
    float (an int submit time, say: Python's mixed arithmetic, which
    Cython's own would not match for a zero's sign), or an ``e`` of zero
    (Python raises ZeroDivisionError where C divides)."""
    cdef Py_ssize_t n = len(heads), i
    if not n or len(es) != n or len(signs) != n or type(now) is not float:
        return False
    for i in range(n):
        if (type(heads[i]) is not float or type(es[i]) is not float
                or type(signs[i]) is not float):
            return False
    cdef double t = now, s, e, v, total = 0.0
    # max(heads) > now, as ``max`` finds it (a NaN head is kept or passed
    # over by its place, as there).
    cdef double top = heads[0]
    for i in range(1, n):
        s = heads[i]
        if s > top:
            top = s
    if top > t:
        return None
    cdef list values = [None] * n
    for i in range(n):
        s = heads[i]
        e = es[i]
        if e == 0.0:
            return False
        v = ((t - s) + e) / e * <double>signs[i]
        values[i] = v
        total += v
    if total != total or total == -INFINITY:
        return None
    return values


cdef long long SMALL = 1LL << 62


cdef inline double _at(list a, Py_ssize_t k, bint* bad):
    """Item ``k`` of ``a`` as a C double; ``bad`` set where it is not an
    exact float."""
    o = a[k]
    if type(o) is not float:
        bad[0] = True
        return 0.0
    return PyFloat_AS_DOUBLE(o)


cdef inline long long _count(list a, Py_ssize_t k, bint* bad):
    """Item ``k`` of ``a`` as a C integer; ``bad`` set where it is not an
    int of less than 2**62 in size."""
    o = a[k]
    cdef int over = 0
    if type(o) is not int:
        bad[0] = True
        return 0
    cdef long long v = PyLong_AsLongLongAndOverflow(o, &over)
    if over or not -SMALL < v < SMALL:
        bad[0] = True
        return 0
    return v


def count_place(list times, list free, need, duration, idle, bint first_only, Py_ssize_t i):
    """``countprofile.CountProfile.place``'s scan from step ``i`` on C
    doubles and integers: the same start (or None) and the same changes to
    ``times`` and ``free``. False, with nothing changed, where the scan
    cannot be the interpreter's here: a step it reads that is not an exact
    float, a count, ``need`` or ``idle`` that is not an int below 2**62, a
    duration neither None nor an exact float (the caller then scans in
    Python). Every item is checked as it is read, before any change."""
    cdef Py_ssize_t n = len(times), j, k, lo, hi, mid
    cdef bint bad = False
    if len(free) != n or type(need) is not int or type(idle) is not int:
        return False
    if duration is not None and type(duration) is not float:
        return False
    if not -SMALL < need < SMALL or not -SMALL < idle < SMALL:
        return False
    cdef long long want = need, spare = idle
    cdef double start, end, d = 0.0 if duration is None else <double>duration
    while True:
        while i < n and _count(free, i, &bad) < want:
            i += 1
        if bad:
            return False
        if i == n or (first_only and i):
            return None
        start = _at(times, i, &bad)
        end = INFINITY if duration is None else start + d
        j = i + 1
        while j < n and _at(times, j, &bad) < end:
            if _count(free, j, &bad) < want:
                break
            j += 1
        else:
            if bad:
                return False
            if i or want <= spare:
                if duration is not None and j < n and _at(times, j, &bad) == end:
                    pass
                elif duration is not None:
                    times.insert(j, end)
                    free.insert(j, free[j - 1])
                found = times[i]
                for k in range(i, j):
                    free[k] = <long long>free[k] - want
                return found
            if first_only:
                return None
            # bisect_right(times, start), as the bisect module finds it.
            lo = 0
            hi = n
            while lo < hi:
                mid = (lo + hi) // 2
                if start < _at(times, mid, &bad):
                    hi = mid
                else:
                    lo = mid + 1
            if bad:
                return False
            i = lo
            continue
        if bad:
            return False
        if first_only:
            return None
        i = j + 1


def hrrn_ranked(now, list fifo, dict answers, answer):
    """``pool_adaptive._rated`` compiled: the same entries and the same
    values, in submit order. A job's ratio is taken on C doubles where its
    rank, its submit time and ``now`` are exact floats (the float Python
    computes: IEEE doubles, no contraction), else by the interpreter's
    operators."""
    cdef list ranked = [], unranked = [], values = []
    cdef tuple entry, found
    cdef double t = 0.0, s, e, w
    cdef bint fast = type(now) is float
    if fast:
        t = now
    for entry in fifo:
        number = entry[2]
        got = answers.get(number)
        found = got if got else answer(number)
        est = found[1]
        if est is None:
            unranked.append((entry[1], found[0], entry[3]))
            continue
        ranked.append((entry[1], found[0], entry[3]))
        submit = entry[0]
        if fast and type(est) is float and type(submit) is float:
            e = PyFloat_AS_DOUBLE(est)
            if not e > 1.0:
                e = 1.0
            w = t - PyFloat_AS_DOUBLE(submit)
            if not w > 0.0:
                w = 0.0
            values.append(-(w + e) / e)
        else:
            eo = est if est > 1.0 else 1.0
            wo = now - submit
            values.append(-((wo if wo > 0.0 else 0.0) + eo) / eo)
    return ranked, unranked, values


def hrrn_top(list values):
    """Where ``_Kept.merge`` finds its next group, in one pass: the index of
    the first lowest value where it is the only one (``values.index(min)``
    with ``count`` 1), -1 where the lowest is infinite (the merge ends),
    -2 where several share it (the caller breaks the tie), -3 where the
    answer is the interpreter's to find (an item not an exact float, a
    leading NaN, which ``min`` keeps), as ``min`` skips a later NaN."""
    cdef Py_ssize_t n = len(values), i, k = 0, ties = 1
    cdef double v, low
    if not n:
        return -3
    for i in range(n):
        if type(values[i]) is not float:
            return -3
    low = PyFloat_AS_DOUBLE(values[0])
    if low != low:
        return -3
    for i in range(1, n):
        v = PyFloat_AS_DOUBLE(values[i])
        if v < low:
            low = v
            k = i
            ties = 1
        elif v == low:
            ties += 1
    if low == INFINITY:
        return -1
    return k if ties == 1 else -2
