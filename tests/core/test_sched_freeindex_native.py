"""The compiled free index (``_freeindex_c``, Cython) answers every call as
the pure ``freeindex.FreeIndex`` does and leaves the same index behind: both
are driven through the same random adds, moves, removes, tightenings and
walks, and compared after every step.

Where the extension was not built (no C compiler at install) these tests
skip, saying so; in CI (``CI=true``) that fails instead, so CI measures what
is shipped. ``APPORTION_NO_NATIVE=1`` hides the extension on purpose (the
pure pass of ``.ci/run``, ``tests/conftest.py``): they skip then too.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apportion.core.scheduling import fastindex
from apportion.core.scheduling.freeindex import Entry, FreeIndex
from support import compiled

NativeFreeIndex = compiled("apportion.core.scheduling._freeindex_c", "the compiled free index "
                           "(core/scheduling/_freeindex_c.pyx)", "the pure index is").FreeIndex

# Class id -> its resource names. Classes 70 and 4100 have the names of
# class 0 and bits above 64 and 4096 in the block masks (the compiled
# index builds masks in a byte array, and above 4096 bits in Python ints).
NAMES = {0: ("cpu", "memory"), 1: ("cpu", "gpu", "memory"), 70: ("cpu", "memory"),
         4100: ("cpu", "memory")}
CIDS = sorted(NAMES)


def test_the_cluster_state_uses_the_compiled_index() -> None:
    assert fastindex.NATIVE
    assert fastindex.Index is NativeFreeIndex


def _state(index: FreeIndex) -> tuple[Any, ...]:
    return (index.blocks, index.lasts, index.lens, index.bounds, index.tops, index.masks,
            index.stale, index.size, index.names, index.pos)


def _split(request: dict[str, int], feasible: list[int]) -> tuple[Any, ...]:
    """``filters.need_past`` for a walk of ``cpu`` (the index's resource)."""
    first_of, need_of, walked_of = {}, {}, {}
    vmask = 0
    for cid in feasible:
        names = NAMES[cid]
        if not all(r in names for r in request):
            continue
        vmask |= 1 << cid
        pos = tuple((names.index(r), q) for r, q in request.items())
        others = tuple(p for p in pos if p[0] != names.index("cpu"))
        walked_of[cid] = (names.index("cpu"), request["cpu"])
        need_of[cid] = others
        first_of[cid] = others[0] if others else walked_of[cid]
    need = tuple((r, q) for r, q in request.items() if r != "cpu")
    return vmask, need, first_of, need_of, walked_of


# Few distinct amounts, so ties are the rule, and some below zero (a node
# whose capacity shrank under what it runs); rarely one near the 64-bit
# limit (every amount fits: ``resources.MAX_QUANTITY``).
_amount = st.integers(-2, 6)
_vector = st.tuples(_amount, _amount, _amount) | st.tuples(
    st.sampled_from([2**63 - 1, -(2**63) + 1]), _amount, st.sampled_from([2**62, 5]))
_op = st.one_of(
    st.tuples(st.just("add"), st.sampled_from(CIDS), _vector),
    st.tuples(st.just("remove"), st.integers(0, 10**6)),
    st.tuples(st.just("move"), st.integers(0, 10**6), _vector),
    st.tuples(st.just("tighten"), st.integers(0, 10**6), st.sampled_from(["cpu", "gpu", "memory"])),
    st.tuples(st.just("recompute"), st.integers(0, 10**6)),
    st.tuples(st.just("start"), _amount),
    # A memory amount of 0 asks for cpu alone: the walk of one resource
    # (no other resource to test; the class mask and the walked amount).
    st.tuples(st.just("walk"), st.integers(1, 6), st.integers(0, 6), st.integers(0, 3),
              st.lists(st.sampled_from(CIDS), min_size=1, max_size=3), st.booleans(),
              st.integers(0, 10)),
)


def _vec(cid: int, v: tuple[int, int, int]) -> tuple[int, ...]:
    return v[:len(NAMES[cid])]


def _step(index: FreeIndex, op: tuple[Any, ...], live: list[Entry]) -> Any:
    """Apply ``op`` to ``index`` (``live`` lists its entries, in the same
    order for both indexes); its answer."""
    kind = op[0]
    if kind == "add" or (kind in ("remove", "move") and not live):
        cid, v = (op[1], op[2]) if kind == "add" else (0, (1, 1, 1))
        free = _vec(cid, v)
        bid = max((e[3] for e in live), default=0) + 1
        entry: Entry = (free[0], cid, free, bid)
        index.add(entry, NAMES[cid])
        live.append(entry)
        return None
    if kind == "remove":
        index.remove(live.pop(op[1] % len(live)))
        return None
    if kind == "move":
        j = op[1] % len(live)
        old = live[j]
        free = _vec(old[1], op[2])
        new: Entry = (free[0], old[1], free, old[3])
        if new != old:
            index.move(old, new, NAMES[old[1]])
            live[j] = new
        return None
    if kind in ("tighten", "recompute"):
        if index.blocks:
            k = op[1] % len(index.blocks)
            index.tighten(k, op[2]) if kind == "tighten" else index.recompute(k)
        return None
    if kind == "start":
        return index.bisect(op[1]), index.start(op[1])
    _, cpu, mem, gpu, feasible, loose, stop = op
    request = {"cpu": cpu} | ({"memory": mem} if mem else {}) | ({"gpu": gpu} if gpu else {})
    vmask, need, first_of, need_of, walked_of = _split(request, feasible)
    k0, i0 = index.bisect(cpu)
    walk = index.fitting(k0, i0, loose, vmask, need, first_of, need_of, walked_of)
    # A walk may stop early (its limit): take only the first ``stop``.
    return [found for _, found in zip(range(stop), walk, strict=False)]


_add = st.tuples(st.just("add"), st.sampled_from(CIDS), _vector)


@settings(max_examples=300, deadline=None)
@given(st.lists(_add, min_size=1, max_size=80), st.lists(_op, min_size=10, max_size=120))
def test_the_compiled_index_answers_and_changes_as_the_pure_one(
    start: list[tuple[Any, ...]], ops: list[tuple[Any, ...]]
) -> None:
    pure, native = FreeIndex(), NativeFreeIndex()
    live_pure: list[Entry] = []
    live_native: list[Entry] = []
    for op in start + ops:
        assert _step(native, op, live_native) == _step(pure, op, live_pure), op
        assert _state(native) == _state(pure), op
        assert len(native) == len(pure)
    assert list(native) == list(pure) == sorted(live_pure)


def test_a_walk_keeps_the_entries_that_fit_with_their_counts() -> None:
    # Literal: three buckets of class 0 (cpu, memory); a job of 2 cpu and
    # 3 memory walks the cpu index up from 2.
    index = NativeFreeIndex()
    for bid, free in enumerate([(1, 9), (2, 2), (4, 7), (6, 3)]):
        index.add((free[0], 0, free, bid), NAMES[0])
    k0, i0 = index.bisect(2)
    found = list(index.fitting(k0, i0, False, 1, (("memory", 3),), {0: (1, 3)},
                               {0: ((1, 3),)}, {0: (0, 2)}))
    assert found == [((4, 0, (4, 7), 2), 2), ((6, 0, (6, 3), 3), 1)]
    assert list(index.fitting(k0, i0, True, 1, (("memory", 3),), {0: (1, 3)},
                              {0: ((1, 3),)}, {0: (0, 2)})) == found[::-1]


def test_moving_an_entry_that_is_not_there_is_refused() -> None:
    index = NativeFreeIndex()
    index.add((1, 0, (1, 1), 0), NAMES[0])
    with pytest.raises(ValueError, match="not in index"):
        index.move((1, 0, (1, 2), 0), (2, 0, (2, 2), 0), NAMES[0])
    with pytest.raises(ValueError, match="not in index"):
        index.remove((0, 0, (0, 1), 0))
