# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# distutils: extra_compile_args = -ffp-contract=off -fno-fast-math
"""The replays' hot loops compiled (Cython): the adaptive queues' response
ratios (``adaptive_queue._Kept``'s values and next group,
``pool_adaptive.LearnedQueue``'s order), the conservative count
profile's scan (``countprofile.CountProfile.place``) and the adaptive
history's pass over a finished job's keys (``adaptive_parts.learn_keys``).

Each kernel gives the floats and answers the Python it stands for gives
(IEEE doubles, no contraction or fast math), and hands back (False, or -3)
where it cannot be that Python: an item that is not an exact float or a
small int, a division by zero; the caller then runs its own Python.
``tests/core/test_sched_ratios_native.py`` holds each to that Python.

Built by ``setup.py`` beside the compiled free index (optional: without a
compiler ``core/fastreplay.py`` falls back to the Python). bench/README.md,
h28-adaptive, has the figures.
"""

from libc.math cimport INFINITY, exp, fabs, log
from cpython.float cimport PyFloat_AS_DOUBLE
from cpython.long cimport PyLong_AsLongLongAndOverflow

from bisect import bisect_left as _bisect_left, insort as _insort
from math import exp as _exp, log as _log


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


def learn_keys(history, list keys, run_time):
    """``adaptive_parts.learn_keys`` compiled: the same changes to
    ``history`` in the same order (its errors, windows, typical values,
    dropped floors, ``shape`` and ``keys_gained``), and the same errors
    raised. The objects are the interpreter's (its sums, medians and
    comparisons); only a level's error is taken on C doubles, where the
    run, the value, the mean and the weights are exact floats and the log's
    argument is positive and finite (libm's ``log``, as ``math.log``'s),
    else by the interpreter's operators. ``_FLOOR_S`` is 1.0 here too."""
    cdef dict typical = history.typical, errors = history.errors
    cdef dict windows = history.windows, readers = history.floor_readers
    cdef dict floor_cache = history.floor_cache
    cdef Py_ssize_t n, mid
    cdef double q, m, lg
    smoothing = history.settings.smoothing
    actual = run_time + 1.0  # ``_log_error``'s, once
    cdef bint fast = (type(actual) is float and type(smoothing) is float
                      and PyFloat_AS_DOUBLE(actual) != 0.0)
    for key in keys:
        value = typical.get(key)
        if value is not None:
            err = errors.get(key[0]) or history._error(key[0])
            err.count += 1
            weight = 1.0 / err.count
            if weight < smoothing:
                weight = smoothing
            mean = err.mean
            if fast and type(value) is float and type(mean) is float and type(weight) is float:
                q = (PyFloat_AS_DOUBLE(value) + 1.0) / PyFloat_AS_DOUBLE(actual)
                lg = fabs(log(q)) if 0.0 < q < INFINITY else fabs(<double>_log(q))
                m = PyFloat_AS_DOUBLE(mean)
                err.mean = m + PyFloat_AS_DOUBLE(weight) * (lg - m)
            else:
                err.mean = mean + weight * (abs(_log((value + 1.0) / actual)) - mean)
        window = windows.get(key)
        if window is None:
            window = history._window(key)
        # ``_Window.take`` written out.
        kept = window.kept
        ordered = window.ordered
        if ordered is not None:
            if len(kept) == window.depth:
                del ordered[_bisect_left(ordered, kept[0])]
            _insort(ordered, run_time)
        kept.append(run_time)
        n = len(kept)
        if n < window.min_runs:
            continue
        if n <= 2:
            new = sum(kept) / n
        else:
            if ordered is None:
                ordered = sorted(kept)
            mid = n // 2
            new = ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2
        if value is None:
            history.shape += 1
            history.keys_gained += 1
        typical[key] = new
        if readers and new != value:
            dropped = readers.pop(key, None)
            if dropped is not None:
                for number in dropped:
                    floor_cache.pop(number, None)
                history.floors_dropped += dropped


cdef object _NO_WEIGHT = object()


def answer_of(history, Py_ssize_t number):
    """``RuntimeHistory._answer`` compiled: the same (estimate,
    rank) and the same changes to ``history`` (``sig_best``, the table's
    user weights). The weighted mean is taken on C doubles where the
    learned value, the estimate, its log and both weights are exact floats,
    the weights' sum is not zero and libm's ``log`` and ``exp`` give finite
    values from finite ones (as ``math.log`` and ``math.exp`` then do),
    else by the interpreter's ``math``. ``_FLOOR_S`` is 1.0 here too."""
    cdef double lg, wl, wg, mixed
    facts = history.sig_facts[number]
    given = facts.given
    table = history.levels_now or history._levels()
    best = _best_of(history, number, facts, table)
    key = best[1]
    if key is None:
        return given, given
    learned = history.typical[key]
    level = best[2]
    if given is None:
        return learned, None if level in table.poor else learned
    if level in table.poor:
        return given, given
    w_learned = table.weight.get(level)
    w_given = history.user_weights.get(facts.user)
    if w_given is None:
        users = table.users
        w_given = users.get(facts.user, _NO_WEIGHT)
        if w_given is _NO_WEIGHT:
            w_given = history._user_weight(facts.user)
            users[facts.user] = w_given
    if w_given is None or w_learned is None:
        least = given if given < learned else learned
        return least, least
    log_given = facts.log_given
    if log_given is None:
        log_given = _log(given + 1.0)
    if (type(learned) is float and type(given) is float and type(log_given) is float
            and type(w_learned) is float and type(w_given) is float):
        wl = PyFloat_AS_DOUBLE(w_learned)
        wg = PyFloat_AS_DOUBLE(w_given)
        lg = PyFloat_AS_DOUBLE(learned) + 1.0
        if wl + wg != 0.0 and 0.0 < lg < INFINITY:
            mixed = (wl * log(lg) + wg * PyFloat_AS_DOUBLE(log_given)) / (wl + wg)
            if -INFINITY < mixed < INFINITY and exp(mixed) < INFINITY:
                mixed = exp(mixed) - 1.0
                if PyFloat_AS_DOUBLE(given) < mixed:
                    mixed = PyFloat_AS_DOUBLE(given)
                if not mixed > 0.0:
                    mixed = 0.0
                return mixed, mixed
    mixed_o = _exp((w_learned * _log(learned + 1.0) + w_given * log_given)
                   / (w_learned + w_given)) - 1.0
    if given < mixed_o:  # max(0.0, min(mixed, given))
        mixed_o = given
    if not mixed_o > 0.0:
        mixed_o = 0.0
    return mixed_o, mixed_o


cdef object _best_of(history, number, facts, table):
    """``sig_best[number]``, made anew where the history's shape moved."""
    best = history.sig_best[number]
    shape = history.shape
    if best[0] != shape:
        best = (shape, *history._best(facts.keys, table.order))
        history.sig_best[number] = best
    return best


cdef double TAME = 1e300  # ``adaptive_parts._TAME``


cdef object _floor(history, number, table):
    """``RuntimeHistory._floor`` written out (the same floor and the same
    changes to ``sig_best``, ``floor_readers`` and ``floor_levels``)."""
    cdef double least
    facts = history.sig_facts[number]
    given = facts.given
    best = _best_of(history, number, facts, table)
    key = best[1]
    if key is None or given is None or history.wild or not 0.0 <= given < TAME:
        return -1.0
    # Listed before the poor test, as there.
    history.floor_readers.setdefault(key, []).append(number)
    levels = history.floor_levels
    numbers = levels.get(best[2])
    if numbers is None:
        numbers = levels[best[2]] = set()
    numbers.add(number)
    learned = history.typical[key]
    if best[2] in table.poor or not 0.0 <= learned < TAME:
        return -1.0
    if type(given) is float and type(learned) is float:
        least = PyFloat_AS_DOUBLE(given)
        if not least < PyFloat_AS_DOUBLE(learned):  # ``given if given < learned else learned``
            least = PyFloat_AS_DOUBLE(learned)
        return least - 1e-9 * (least + 1.0)
    least_o = given if given < learned else learned
    return least_o - 1e-9 * (least_o + 1.0)


def floors_of(history, jobs, table):
    """``RuntimeHistory.floors``'s loop compiled, past its
    ``_floor_table`` (given as ``table``): the same ranks and floors, the
    same changes to ``history`` in the same order (the floors kept, the
    answers taken, the jobs' keys and signatures where one is new)."""
    cdef dict key_cache = history.key_cache, answers = history.answers
    cdef dict cache = history.floor_cache
    cdef list out = [], exact = []
    for job in jobs:
        of = key_cache.get(job.id)
        number = (of if of is not None else history._of(job))[1]
        found = answers.get(number)
        if found is None:
            floor = cache.get(number)
            if floor is None:
                floor = _floor(history, number, table)
                cache[number] = floor
            if floor >= 0.0:
                out.append(floor)
                exact.append(False)
                continue
            found = history.answer(number)
        out.append(found[1])
        exact.append(True)
    return out, exact


def levels_of(history, tuple levels):
    """``RuntimeHistory._levels``'s pass over the levels compiled: the
    levels' order, the poor ones (a list) and each scored level's weight,
    the same objects Python builds, by the interpreter's operators."""
    cdef dict errors = history.errors
    cdef dict means = {}, weight = {}
    cdef list poor = []
    s = history.settings
    min_runs, max_error = s.min_runs, s.max_error
    for level in levels:
        err = errors.get(level)
        if err is None:
            means[level] = INFINITY
            continue
        mean = err.mean
        means[level] = mean
        # The interpreter's ``**``: C's ``pow(m, 2.0)`` is folded to
        # ``m * m``, which is not always libm's ``pow`` (the test saw it).
        weight[level] = 1.0 / max(mean, 0.01) ** 2
        if err.count >= min_runs[level] and mean > max_error:
            poor.append(level)
    # Stable: levels with equal errors stay most specific first.
    return tuple(sorted(levels, key=means.__getitem__)), poor, weight

