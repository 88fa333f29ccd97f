"""FreeIndex keeps a block's bounds exact while they are not stale, counting
the entries that hold each bound: removing one of several that share the
largest amount leaves the block as it is (no recompute), and the walk's
skips stay the same as over bounds recomputed from scratch. Staleness is per
resource: a bound not marked loose is exact, and ``tighten`` makes one
resource's bound exact without touching the others."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from apportion.core.scheduling.freeindex import Entry, FreeIndex

CM = ("cpu", "memory")
CMG = ("cpu", "gpu", "memory")


def _tight(index: FreeIndex, k: int) -> tuple[dict[str, int], dict[str, int]]:
    """Block ``k``'s bounds and holder counts, computed from its entries."""
    bound: dict[str, int] = {}
    for _, cid, free, _ in index.blocks[k]:
        for r, q in zip(index.names[cid], free, strict=True):
            if q > bound.get(r, -1):
                bound[r] = q
    top = dict.fromkeys(bound, 0)
    for _, cid, free, _ in index.blocks[k]:
        for r, q in zip(index.names[cid], free, strict=True):
            if r in bound and q == bound[r]:
                top[r] += 1
    return bound, top


def _check_bounds(index: FreeIndex) -> None:
    """Every bound bounds its block (the walk's skips are safe), and one not
    marked loose is exact, with its holders. (A block's first entry may put
    an amount below zero in its bound; the walk reads a missing one as -1
    anyway.)"""
    for k in range(len(index.blocks)):
        bound, top = _tight(index, k)
        for r, q in bound.items():
            assert index.bounds[k].get(r, -1) >= q
        exact = {r: q for r, q in index.bounds[k].items() if q >= 0 and r not in index.stale[k]}
        assert exact == {r: q for r, q in bound.items() if r not in index.stale[k]}
        assert {r: index.tops[k][r] for r in exact} == {r: top[r] for r in exact}


# Few distinct amounts, so ties are the rule (as free amounts in whole cores
# and GiB are on a filled cluster), and some below zero (a node whose
# capacity shrank under what it runs).
_amount = st.integers(-2, 6)
_op = st.tuples(st.booleans(), st.booleans(), _amount, _amount, _amount, st.integers(0, 4))


@settings(max_examples=150, deadline=None)
@given(st.lists(_op, max_size=200))
def test_a_block_not_stale_has_exact_bounds_and_counts(ops: list[tuple[bool, ...]]) -> None:
    index = FreeIndex()
    live: list[Entry] = []
    bid = 0
    for add, gpu, cpu, mem, g, pick in ops:
        if add or not live:
            bid += 1
            free = (int(cpu), int(g), int(mem)) if gpu else (int(cpu), int(mem))
            entry: Entry = (int(cpu), 1 if gpu else 0, free, bid)
            index.add(entry, CMG if gpu else CM)
            live.append(entry)
        else:
            entry = live.pop(int(pick) * 7919 % len(live))
            index.remove(entry)
        if int(pick) == 3 and index.blocks:
            index.recompute(int(cpu) % len(index.blocks))  # as a walk would
        if int(pick) == 4 and index.blocks:
            # As a walk that tests one resource would.
            index.tighten(int(cpu) % len(index.blocks), ("cpu", "memory", "gpu")[int(g) % 3])
        _check_bounds(index)  # stale or not, the bounds bound (the walk's skips are safe)
    assert sorted(live) == list(index)


_move = st.tuples(st.integers(0, 10**6), _amount, _amount, st.booleans())


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(_amount, _amount), min_size=1, max_size=70),
       st.lists(_move, max_size=120))
def test_move_lays_entries_out_as_remove_then_add(
    start: list[tuple[int, int]], moves: list[tuple[int, int, int, bool]]
) -> None:
    # A bucket moving to another free vector (a grant or a release): the
    # one-step move must leave the blocks exactly as remove-then-add does,
    # with bounds that bound and are exact where not marked loose.
    moved, plain = FreeIndex(), FreeIndex()
    live: list[Entry] = []
    for bid, (cpu, mem) in enumerate(start):
        entry: Entry = (cpu, 0, (cpu, mem), bid)
        moved.add(entry, CM)
        plain.add(entry, CM)
        live.append(entry)
    for pick, cpu, mem, keep_mem in moves:
        j = pick % len(live)
        old = live[j]
        new_mem = old[2][1] if keep_mem else int(mem)  # a resource the task did not ask for
        new: Entry = (int(cpu), 0, (int(cpu), new_mem), old[3])
        if new == old:
            continue
        moved.move(old, new, CM)
        plain.remove(old)
        plain.add(new, CM)
        live[j] = new
        assert (moved.blocks, moved.lasts, moved.lens, moved.masks, moved.size) == (
            plain.blocks, plain.lasts, plain.lens, plain.masks, plain.size)
        _check_bounds(moved)
    assert list(moved) == sorted(live)
