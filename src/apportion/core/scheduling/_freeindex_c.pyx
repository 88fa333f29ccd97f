# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# distutils: extra_compile_args = -ffp-contract=off -fno-fast-math
"""``freeindex.FreeIndex`` with its hot methods compiled (Cython): the
placement walk's search (``fitting``), a bound's tightening and the entry
moves of every grant and release.

The data stay as the pure class keeps them (blocks of entry tuples, bounds
as dicts); what changes is how they are read. The interpreter compares two
entries tuple by tuple, item by item, through generic rich comparison; here
an entry's free amount, class id and free vector are read straight out of
the tuples as C integers (every amount fits 64 bits: ``resources.MAX_QUANTITY``)
and compared as such, and the walk's block and entry tests are C loops. The
answers and every change to the index are the pure methods' own:
``tests/core/test_sched_freeindex_native.py`` drives both through random
sequences and compares each answer and the whole state after each step.

Built by ``setup.py`` (optional: without a compiler the pure class is used;
``fastindex`` chooses). bench/README.md, tenth session (h26-native), has the
figures.
"""

from cpython.pyport cimport PY_SSIZE_T_MAX
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from bisect import bisect_left, insort
from types import MemberDescriptorType

from apportion.core.scheduling.freeindex import BLOCK
from apportion.core.scheduling.freeindex import FreeIndex as PureFreeIndex

cdef long long UNBOUNDED = 1 << 62


cdef inline int _cmp(tuple a, tuple b) except -2:
    """-1, 0 or 1 as entry ``a`` sorts before, as or after ``b``: what
    tuple comparison answers for two entries, on C integers."""
    cdef long long x = a[0]
    cdef long long y = b[0]
    if x != y:
        return -1 if x < y else 1
    x = a[1]
    y = b[1]
    if x != y:
        return -1 if x < y else 1
    cdef tuple fa = a[2]
    cdef tuple fb = b[2]
    cdef Py_ssize_t i, na, nb
    if fa is not fb:
        na = len(fa)
        nb = len(fb)
        for i in range(na if na < nb else nb):
            x = fa[i]
            y = fb[i]
            if x != y:
                return -1 if x < y else 1
        if na != nb:
            return -1 if na < nb else 1
    x = a[3]
    y = b[3]
    if x != y:
        return -1 if x < y else 1
    return 0


cdef inline Py_ssize_t _bisect(list entries, tuple entry) except -1:
    """``bisect.bisect_left(entries, entry)``."""
    cdef Py_ssize_t lo = 0
    cdef Py_ssize_t hi = len(entries)
    cdef Py_ssize_t mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if _cmp(<tuple>entries[mid], entry) < 0:
            lo = mid + 1
        else:
            hi = mid
    return lo


cdef inline Py_ssize_t _bisect_amount(list entries, long long amount) except -1:
    """Where the first entry with at least ``amount`` is (``bisect_left``
    with the key ``(amount, -1)``: class ids are never negative)."""
    cdef Py_ssize_t lo = 0
    cdef Py_ssize_t hi = len(entries)
    cdef Py_ssize_t mid
    cdef long long q
    while lo < hi:
        mid = (lo + hi) >> 1
        q = (<tuple>entries[mid])[0]
        if q < amount:
            lo = mid + 1
        else:
            hi = mid
    return lo


cdef inline long long _floordiv(long long f, long long q) except? -1:
    """Python's ``f // q`` (rounds down, also below zero)."""
    if q == 0:
        raise ZeroDivisionError("integer division or modulo by zero")
    cdef long long n = f // q
    if (f % q != 0) and ((f < 0) != (q < 0)):
        n -= 1
    return n


cdef extern from "Python.h":
    object _PyLong_FromByteArray(const unsigned char* buf, size_t n, int little_endian,
                                 int is_signed)


cdef enum:
    MASK_BYTES = 512  # class ids below 4096 set bits in C; above, Python ints


cdef object _mask(list block):
    """The bits of the classes of ``block``'s entries, ``1 << class id`` each:
    set in a byte array and made an int once (a fleet of a few hundred
    classes has masks of several machine words, and a shift and an or of
    Python ints per entry cost more than the rest of a tighten)."""
    cdef unsigned char buf[MASK_BYTES]
    cdef Py_ssize_t top = -1
    cdef Py_ssize_t cid
    cdef tuple entry
    for entry in block:
        cid = entry[1]
        if cid >= MASK_BYTES * 8:
            mask = 0
            for entry in block:
                mask |= 1 << entry[1]
            return mask
        if cid >> 3 > top:
            for i in range(top + 1, (cid >> 3) + 1):
                buf[i] = 0
            top = cid >> 3
        buf[cid >> 3] |= 1 << (cid & 7)
    return _PyLong_FromByteArray(buf, top + 1, 1, 0)


cdef inline long long _bound(dict bound, object resource):
    """``bound.get(resource, -1)``."""
    value = bound.get(resource)
    if value is None:
        return -1
    return <long long>value


class FreeIndex(PureFreeIndex):
    """``freeindex.FreeIndex``, its hot methods compiled; same answers."""

    __slots__ = ()

    def bisect(self, amount):
        cdef list lasts = self.lasts
        cdef long long a = amount
        cdef Py_ssize_t k = _bisect_amount(lasts, a)
        if k == len(lasts):
            return k, 0
        return k, _bisect_amount(<list>self.blocks[k], a)

    def start(self, amount):
        return _start_of(self, amount)

    def add(self, entry, names):
        _add(self, entry, names)

    def remove(self, entry):
        cdef tuple e = entry
        cdef Py_ssize_t k = _bisect(self.lasts, e)
        cdef list block = self.blocks[k]
        cdef Py_ssize_t i = _bisect(block, e)
        if i >= len(block) or _cmp(<tuple>block[i], e) != 0:
            raise ValueError(f"{entry} not in index")
        _remove_at(self, k, block, i, entry)

    def _remove_at(self, k, block, i, entry):
        _remove_at(self, k, block, i, entry)

    def move(self, old, new, names):
        _move_entry(self, old, new, names)

    def recompute(self, k):
        _recompute(self, k)

    def tightened(self, k, need, loose):
        return _tightened(self, k, need, loose)

    def tighten(self, k, resource):
        _tighten(self, k, resource)

    def fitting(self, k0, i0, loose, vmask, need, first_of, need_of, walked_of):
        cdef _Walk walk = _Walk(self, k0, i0, loose, vmask, need, first_of, need_of,
                                walked_of)
        cdef tuple entry
        while True:
            entry = walk.next()
            if entry is None:
                return
            yield entry, walk.fit


cdef _add(self, entry, names):
    """``FreeIndex.add`` (``_move_entry`` calls it without a method call)."""
    cdef tuple e = entry
    cdef list lasts = self.lasts
    cdef Py_ssize_t k
    if not lasts:
        PureFreeIndex.add(self, entry, names)
        return
    self.size += 1
    cid = e[1]
    if cid not in self.names:
        self._learn(cid, names)
    k = _bisect(lasts, e)
    cdef list block
    if k == len(lasts):
        k -= 1
        block = self.blocks[k]
        block.append(e)
        lasts[k] = e
    else:
        block = self.blocks[k]
        block.insert(_bisect(block, e), e)
    cdef list lens = self.lens
    cdef Py_ssize_t n = <Py_ssize_t>lens[k] + 1
    lens[k] = n
    _raise(self.bounds[k], self.tops[k], self.stale[k], names, e[2])
    self.masks[k] |= 1 << cid
    if n > 2 * BLOCK:
        self._split(k)


cdef _remove_at(self, k, block, i, entry):
    """``FreeIndex._remove_at``."""
    cdef list b = block
    cdef Py_ssize_t kk = k
    del b[i]
    self.size -= 1
    if not b:
        del self.blocks[kk], self.lasts[kk], self.lens[kk], self.bounds[kk]
        del self.masks[kk], self.stale[kk], self.tops[kk]
        return
    cdef list lens = self.lens
    lens[kk] = <Py_ssize_t>lens[kk] - 1
    self.lasts[kk] = b[len(b) - 1]
    cdef tuple e = entry
    _lower(self.bounds[kk], self.tops[kk], self.stale[kk], self.names[e[1]], e[2])


cdef _recompute(self, k):
    """``FreeIndex.recompute``."""
    # Entry by entry (the pure method groups them by their classes'
    # names to take one max() per column; in C the plain loop is the
    # cheaper one): the same bounds, counts and mask.
    # Each entry comes in as ``add``'s does (``_raise``, no loose set).
    cdef dict names = self.names
    cdef dict bound = {}
    cdef dict top = {}
    cdef set none_loose = set()
    cdef tuple entry
    cdef list block = self.blocks[k]
    for entry in block:
        _raise(bound, top, none_loose, names[entry[1]], entry[2])
    self.bounds[k] = bound
    self.tops[k] = top
    self.masks[k] = _mask(block)
    self.stale[k] = set()


cdef bint _tightened(self, k, need, loose) except -1:
    """``FreeIndex.tightened`` (the walk calls it without a method call)."""
    cdef bint done = False
    for pair in need:
        r = pair[0]
        if r in loose:
            _tighten(self, k, r)
            done = True
    if not done:
        _recompute(self, k)
    return True


cdef _tighten(self, k, resource):
    """``FreeIndex.tighten``."""
    cdef dict col = self.pos.get(resource, {})
    cdef long long best = -1
    cdef long long q
    cdef Py_ssize_t held = 0
    cdef tuple entry
    cdef list block = self.blocks[k]
    for entry in block:
        j = col.get(entry[1])
        if j is not None:
            q = (<tuple>entry[2])[<Py_ssize_t>j]
            if q > best:
                best = q
                held = 1
            elif q == best:
                held += 1
    mask = _mask(block)
    cdef dict bound = self.bounds[k]
    cdef dict top = self.tops[k]
    if best >= 0:
        bound[resource] = best
        top[resource] = held
    else:
        bound.pop(resource, None)
        top.pop(resource, None)
    self.masks[k] = mask
    (<set>self.stale[k]).discard(resource)


cdef class _Walk:
    """``FreeIndex.fitting``'s walk as a cursor: ``next`` gives the next
    entry it keeps (its fit in ``fit``), or None at the end. The generator
    and ``pick`` (which scores what it keeps without yielding) share it."""

    cdef object index, vmask, need, r1
    cdef list blocks, bounds, masks, stale, block
    cdef Py_ssize_t nb, kk0, ii0, k, step, stop, a, b, i, nn
    cdef bint down
    cdef tuple needs
    cdef long long q1
    cdef dict firsts, others, walkeds
    cdef public long long fit

    def __cinit__(self, index, k0, i0, loose, vmask, need, first_of, need_of, walked_of):
        self.index = index
        self.blocks = index.blocks
        self.bounds = index.bounds
        self.masks = index.masks
        self.stale = index.stale
        self.nb = len(self.blocks)
        self.kk0 = k0
        self.ii0 = i0
        self.down = loose
        self.vmask = vmask
        self.need = need
        self.needs = tuple(need)
        self.nn = len(self.needs)
        self.r1 = self.needs[0][0] if self.nn else ""
        self.q1 = self.needs[0][1] if self.nn else -1
        self.firsts = first_of
        self.others = need_of
        self.walkeds = walked_of
        self.block = None
        if self.down:
            self.k, self.step, self.stop = self.nb - 1, -1, self.kk0 - 1
        else:
            self.k, self.step, self.stop = self.kk0, 1, self.nb

    cdef bint _enter(self) except -1:
        """Move ``k`` to the next block that may hold a fitting entry and
        start on it; False past the last one."""
        cdef dict bound
        cdef tuple pair
        cdef Py_ssize_t t
        cdef bint short
        cdef list masks = self.masks
        vmask = self.vmask
        while self.k != self.stop:
            bound = self.bounds[self.k]
            if _bound(bound, self.r1) < self.q1 or not (masks[self.k] & vmask):
                self.k += self.step
                continue
            short = False
            for t in range(1, self.nn):
                pair = self.needs[t]
                if _bound(bound, pair[0]) < <long long>pair[1]:
                    short = True
                    break
            if short:
                self.k += self.step
                continue
            loose_rs = self.stale[self.k]
            if loose_rs and (_tightened(self.index, self.k, self.need, loose_rs)
                             if type(self.index) is FreeIndex
                             else self.index.tightened(self.k, self.need, loose_rs)):
                if not (masks[self.k] & vmask):
                    self.k += self.step
                    continue
                bound = self.bounds[self.k]
                for t in range(self.nn):
                    pair = self.needs[t]
                    if _bound(bound, pair[0]) < <long long>pair[1]:
                        short = True
                        break
                if short:
                    self.k += self.step
                    continue
            self.block = self.blocks[self.k]
            self.a = self.ii0 if self.k == self.kk0 else 0
            self.b = len(self.block)
            self.i = self.b - 1 if self.down else self.a
            return True
        return False

    cdef tuple next(self):
        cdef tuple entry, free, pair
        cdef long long fit, n
        cdef list block
        while True:
            if self.block is None and not self._enter():
                return None
            block = self.block
            while (self.i >= self.a) if self.down else (self.i < self.b):
                entry = block[self.i]
                self.i += -1 if self.down else 1
                cid = entry[1]
                first = self.firsts.get(cid)
                if first is None:
                    continue
                free = entry[2]
                pair = first
                if <long long>free[<Py_ssize_t>pair[0]] < <long long>pair[1]:
                    continue
                fit = UNBOUNDED
                for pair in <tuple>self.others[cid]:
                    n = _floordiv(free[<Py_ssize_t>pair[0]], pair[1])
                    if n < fit:
                        fit = n
                        if n <= 0:
                            break
                if fit <= 0:
                    continue
                pair = self.walkeds[cid]
                n = _floordiv(free[<Py_ssize_t>pair[0]], pair[1])
                if n < fit:
                    fit = n
                self.fit = fit
                return entry
            self.block = None
            self.k += self.step


def pick(state, spec, verdict, loose, limit, first_is_best, scoring, job_id, need_past):
    """``Placer._pick`` and, given ``job_id``, ``_grant_one``'s grant, for one
    task where no node is a candidate on its own, in one C call: the index
    and start of ``walkstart.walk_index``, the split of ``filters.need_past``
    (``need_past`` is called where the verdict has none yet), the walk and
    ranking (``_pick_entry``), the bucket's first node by name, and, where
    ``job_id`` is given and the node's class has none of the task's
    resources as devices, ``ClusterState.grant`` of the one task.
    ``(rec, aligned, granted)``; None where nothing fits; False where a
    score cannot be exact here (the caller walks in Python)."""
    resources = spec.resources
    # A copy of ``walkstart.walk_index`` (change both together; the
    # differential tests in test_sched_pick_native compare them).
    cdef dict indexes = state._index
    cdef Py_ssize_t k, i, n, best_k = 0, best_i = 0, best_len = -1
    best = None
    walked = ""
    if len(resources) == 1:
        for r, q in resources.items():
            walked = r
            best = indexes.get(r)
            if best is None:
                return None
            best_k = _bisect_amount(<list>best.lasts, q)
            if best_k == len(<list>best.lasts):
                return None
            best_i = _bisect_amount(<list>best.blocks[best_k], q)
    else:
        for r, q in resources.items():
            index = indexes.get(r)
            if index is None:
                return None
            k, i, n = _start_of(index, q)
            if best_len < 0 or n < best_len:
                best, best_k, best_i, best_len, walked = index, k, i, n, r
        if best_len <= 0:
            return None
    split = verdict.need_past.get(walked)
    if split is None:
        split = need_past(state, verdict, walked, spec)
    need_of, walked_of, need, first_of = split
    buckets = state._buckets
    aligned_of = verdict.aligned
    entry = _pick_entry(best, best_k, best_i, loose, verdict.mask, need, first_of, need_of,
                        walked_of, buckets, aligned_of, limit,
                        first_is_best and verdict.lone, scoring)
    if not entry:
        return entry
    rec = state._recs[(<list>buckets[entry[3]].nodes)[0]]
    cdef tuple aligned = aligned_of[entry[1]]
    if job_id is None:
        return rec, aligned, False
    devices = rec.cls.devices
    if devices:
        for r in resources:
            if r in devices:
                return rec, aligned, False
    _grant_one(state, rec, aligned, job_id)
    return rec, aligned, True


cdef _grant_one(state, rec, tuple aligned, job_id):
    """``ClusterState.grant(rec, aligned, 1, job_id)`` without devices: a
    copy of it (change both together; test_sched_pick_native's
    test_the_same_results_state_and_index_as_the_python_walk and
    test_the_compiled_grant_is_logged_and_rolled_back_as_the_python_one
    compare them)."""
    cdef tuple old = rec.free
    cdef Py_ssize_t i, m = len(old)
    cdef tuple new = PyTuple_New(m)
    for i in range(m):
        d = old[i] - aligned[i]
        Py_INCREF(d)
        PyTuple_SET_ITEM(new, i, d)
    _move_free(state, rec, old, new)
    cdef dict jobs = rec.jobs
    jobs[job_id] = jobs.get(job_id, 0) + 1
    log = state._log
    if log.depth:
        (<list>log.entries).append(("g", rec, aligned, 1, job_id, None))
    else:
        state.changes += 1


cdef tuple _start_of(index, amount):
    """``FreeIndex.start(amount)``."""
    cdef list lasts = index.lasts
    cdef long long a = amount
    cdef Py_ssize_t k = _bisect_amount(lasts, a)
    cdef Py_ssize_t nb = len(lasts)
    if k == nb:
        return k, 0, 0
    cdef Py_ssize_t i = _bisect_amount(<list>index.blocks[k], a)
    cdef list lens = index.lens
    cdef Py_ssize_t n = 0
    cdef Py_ssize_t j
    if k < nb // 2:
        for j in range(k):
            n += <Py_ssize_t>lens[j]
        return k, i, <Py_ssize_t>index.size - n - i
    for j in range(k, nb):
        n += <Py_ssize_t>lens[j]
    return k, i, n - i


cdef object _pick_entry(index, k0, i0, loose, vmask, need, first_of, need_of, walked_of,
                        buckets, aligned_of, limit, first, scoring):
    """The entry of the bucket ``Placer._walk`` and ``Placer._best`` choose
    for one task (no node-level candidates): the walk's first ``limit``
    entries (one where ``first``), the first of them with the highest
    weighted score. ``scoring`` is the score plugins as (code, weight):
    1 bin-pack, 2 spread, 3 fitness, 4 balanced (``scorers``' formulas, on
    C doubles). None where no entry fits; False where a score cannot be
    computed here as Python would (an amount of 2**50 or more, a zero
    capacity): the caller then walks again in Python, which meets the same
    entries (this walk only tightened bounds it would tighten too)."""
    cdef _Walk walk = _Walk(index, k0, i0, loose, vmask, need, first_of, need_of, walked_of)
    cdef tuple entry = walk.next()
    if entry is None:
        return None
    # A limit past what a C size holds keeps every entry, as Python's would.
    cdef Py_ssize_t cap_n = 1 if first else (limit if limit < PY_SSIZE_T_MAX else PY_SSIZE_T_MAX)
    if cap_n <= 1:
        return entry
    cdef list kept = [entry]
    while len(kept) < cap_n:
        entry = walk.next()
        if entry is None:
            break
        kept.append(entry)
    if len(kept) == 1 or not scoring:
        return kept[0]
    cdef tuple best = kept[0]
    cdef double best_score = -1.0
    cdef double total, s
    cdef bint ok = True
    for entry in kept:
        total = 0.0
        for code, weight in scoring:
            s = _score(code, buckets[entry[3]].cls.capacity, entry[2], aligned_of[entry[1]],
                       &ok)
            if not ok:
                return False
            total += <double>weight * s
        if total > best_score:
            best = entry
            best_score = total
    return best


def score(code, cap, free, aligned):
    """``_score`` as ``pick`` computes it, for the tests that hold it to
    ``scorers``' plugins: None where it cannot be exact in C."""
    cdef bint ok = True
    cdef double s = _score(code, cap, free, aligned, &ok)
    return s if ok else None


cdef long long EXACT = 1LL << 50
"""Below this, every amount, and a sum of three, is a double exactly: an
int / int of Python (correctly rounded) is then the C division."""


cdef double _score(int code, tuple cap, tuple free, tuple aligned, bint* ok):
    """One score plugin's score (``scorers``) of a candidate; ``ok`` set
    False where it cannot be computed exactly here."""
    cdef Py_ssize_t i, m = len(cap)
    cdef long long c, f, q
    cdef double total = 0.0, share, lo = 0.0, hi = 0.0
    cdef Py_ssize_t n = 0
    for i in range(m):
        c = cap[i]
        f = free[i]
        q = aligned[i]
        if c <= 0 or c >= EXACT or f >= EXACT or f <= -EXACT or q >= EXACT or q < 0:
            ok[0] = False
            return 0.0
    if code == 1 or code == 2:  # BinPack.score, and Spread's 1 - it
        for i in range(m):
            q = aligned[i]
            if q:
                c = cap[i]
                total += <double>(c - <long long>free[i] + q) / <double>c
                n += 1
        share = total / <double>n if n else 0.0
        return share if code == 1 else 1.0 - share
    if code == 3:  # Fitness.score
        for i in range(m):
            c = cap[i]
            total += <double>(<long long>free[i] - <long long>aligned[i]) / <double>c
        return 1.0 - total / <double>m
    if code == 4:  # Balanced.score
        if m < 2:
            return 1.0
        for i in range(m):
            c = cap[i]
            share = <double>(c - <long long>free[i] + <long long>aligned[i]) / <double>c
            if i == 0 or share > hi:
                hi = share
            if i == 0 or share < lo:
                lo = share
        return 1.0 - (hi - lo)
    ok[0] = False
    return 0.0


def move_free(state, rec, old, new):
    """``capacity.FreeCapacity._move`` compiled (``_move_free``)."""
    _move_free(state, rec, old, new)


cdef _move_free(state, rec, old, new):
    """``capacity.FreeCapacity._move`` compiled (its ``_refile`` inlined):
    node ``rec`` of ``state`` goes from free vector ``old`` to ``new``; the
    same totals, buckets and index entries, in the same order of changes.
    Bucket births and deaths (``_drop_bucket``, ``_new_bucket``) stay the
    state's own methods."""
    cdef tuple o = old
    cdef tuple w = new
    rec.free = w
    bucket = rec.bucket
    if bucket is None:
        return
    cls = rec.cls
    cdef list fs = cls.free_sum
    cdef dict ft = state._free_total
    cdef tuple names = cls.resources
    cdef Py_ssize_t i
    cdef Py_ssize_t m = len(w)
    for i in range(m):
        d = w[i] - o[i]
        if d or m == 1:  # a class of one resource adds even 0 (as the pure code does)
            r = names[i]
            ft[r] = ft[r] + d
            fs[i] = fs[i] + d
    cdef list nodes = bucket.nodes
    cid = cls.id
    key = (cid, w)
    cdef dict bucket_of = state._bucket_of
    target = bucket_of.get(key)
    if target is None and len(nodes) == 1:
        # Alone in its bucket, to a free vector no bucket has: the bucket
        # moves with the node (``_refile``).
        _refile(state, bucket, cid, names, w, key, bucket_of)
        return
    name = rec.name
    cdef Py_ssize_t at = bisect_left(nodes, name)
    if at == len(nodes) or nodes[at] != name:
        raise KeyError(name)
    del nodes[at]
    if not nodes:
        state._drop_bucket(bucket)
    if target is None:
        target = state._new_bucket(cls, w, key)
    insort(<list>target.nodes, name)
    rec.bucket = target


cdef _refile(state, bucket, cid, tuple names, tuple w, key, dict bucket_of):
    """``FreeCapacity._refile``: ``bucket`` gets the free vector ``w``."""
    cdef tuple o = bucket.free
    bid = bucket.id
    del bucket_of[(cid, o)]
    bucket_of[key] = bucket
    bucket.free = w
    cdef dict index = state._index
    cdef Py_ssize_t i
    for i in range(len(names)):
        r = names[i]
        ix = index[r]
        if type(ix) is FreeIndex:
            _move_entry(ix, (o[i], cid, o, bid), (w[i], cid, w, bid), names)
        else:
            ix.move((o[i], cid, o, bid), (w[i], cid, w, bid), names)


cdef _move_entry(self, tuple o, tuple w, names):
    """``FreeIndex.move`` (``move_free`` calls it without a method call)."""
    cdef list lasts = self.lasts
    cdef Py_ssize_t k = _bisect(lasts, o)
    cdef Py_ssize_t nl = len(lasts)
    if k >= nl:
        raise ValueError(f"{o} not in index")
    cdef list block = self.blocks[k]
    cdef Py_ssize_t n = len(block)
    cdef Py_ssize_t i = _bisect(block, o)
    if i >= n or _cmp(<tuple>block[i], o) != 0:
        raise ValueError(f"{o} not in index")
    # As the pure ``move``: in one step when ``new`` stays in the block.
    if (n == 1 or (k and _cmp(<tuple>lasts[k - 1], w) >= 0)
            or (_cmp(w, <tuple>(block[n - 1] if i < n - 1 else block[n - 2])) >= 0
                and k < nl - 1)):
        if type(self) is FreeIndex:
            _remove_at(self, k, block, i, o)
            _add(self, w, names)
        else:
            self._remove_at(k, block, i, o)
            self.add(w, names)
        return
    del block[i]
    block.insert(_bisect(block, w), w)
    lasts[k] = block[n - 1]
    _shift(self.bounds[k], self.tops[k], self.stale[k], names, o[2], w[2])


cdef _raise(dict bound, dict top, set loose, names, tuple free):
    """``add``'s bound update: an entry of amounts ``free`` came in."""
    cdef long long q, b
    cdef Py_ssize_t i = 0
    for r in names:
        q = free[i]
        i += 1
        b = _bound(bound, r)
        if q > b:
            bound[r] = q
            top[r] = 1
            if loose:
                loose.discard(r)
        elif q == b and q >= 0:
            top[r] = <Py_ssize_t>top[r] + 1


cdef _lower(dict bound, dict top, set loose, names, tuple free):
    """``_remove_at``'s bound update: an entry of amounts ``free`` left."""
    cdef long long q, b
    cdef Py_ssize_t i = 0
    cdef Py_ssize_t held
    for r in names:
        q = free[i]
        i += 1
        b = _bound(bound, r)
        if q >= b and r not in loose:
            if q == b and b >= 0:
                held = top[r]
                if held > 1:
                    top[r] = held - 1
                    continue
            loose.add(r)


cdef _shift(dict bound, dict top, set loose, names, tuple old, tuple new):
    """``move``'s bound update within one block."""
    cdef long long qo, qn, b
    cdef Py_ssize_t i = 0
    cdef Py_ssize_t held
    for r in names:
        qo = old[i]
        qn = new[i]
        i += 1
        if qo == qn:
            continue
        b = _bound(bound, r)
        if qo >= b and r not in loose:
            if qo == b and b >= 0 and <Py_ssize_t>top[r] > 1:
                top[r] = <Py_ssize_t>top[r] - 1
            else:
                loose.add(r)
        if qn > b:
            bound[r] = qn
            top[r] = 1
            loose.discard(r)
        elif qn == b and qn >= 0:
            top[r] = <Py_ssize_t>top[r] + 1


cdef extern from "Python.h":
    ctypedef struct PyObject
    ctypedef PyObject* (*_allocfunc)(void*, Py_ssize_t)
    ctypedef int (*_descrsetfunc)(PyObject*, PyObject*, PyObject*) except -1
    ctypedef struct _TypeSlots "PyTypeObject":
        _allocfunc tp_alloc
        _descrsetfunc tp_descr_set
    void* Py_TYPE(object)
    void Py_DECREF(object)


def frozen(type cls, tuple slots, *values):
    """An instance of ``cls``, a frozen slots dataclass, with ``values`` in
    the member descriptors ``slots`` (its fields, in order): what
    ``frozen.quick_init``'s ``__init__`` makes, without the type call, the
    Python frame and a method-wrapper call a field (``fastindex.maker``
    checks ``cls`` and ``slots`` once; three objects a placement). Each slot
    is checked a member descriptor here too, a pointer compare, since the C
    setter below is called unchecked: anything else would crash; a member
    descriptor checks the instance is of its class itself)."""
    cdef Py_ssize_t i, n = len(slots)
    if len(values) != n:
        raise TypeError(f"{cls.__name__}: {n} values expected, {len(values)} given")
    for d in slots:
        if type(d) is not MemberDescriptorType:
            raise TypeError(f"{cls.__name__}: slots must be member descriptors, not {d!r}")
    cdef PyObject* o = (<_TypeSlots*>cls).tp_alloc(<void*>cls, 0)
    if o == NULL:
        raise MemoryError()
    obj = <object>o  # a second reference: the variable's
    Py_DECREF(obj)  # tp_alloc's, now held by ``obj``
    cdef PyObject* p = <PyObject*>obj
    for i in range(n):
        d = slots[i]
        v = values[i]
        (<_TypeSlots*>Py_TYPE(d)).tp_descr_set(<PyObject*>d, p, <PyObject*>v)
    return obj
