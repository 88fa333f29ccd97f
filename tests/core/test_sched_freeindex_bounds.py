"""FreeIndex keeps a block's bounds exact while it is not stale, counting
the entries that hold each bound: removing one of several that share the
largest amount leaves the block as it is (no recompute), and the walk's
skips stay the same as over bounds recomputed from scratch."""

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


# Few distinct amounts, so ties are the rule (as free amounts in whole cores
# and GiB are on a filled cluster), and some below zero (a node whose
# capacity shrank under what it runs).
_amount = st.integers(-2, 6)
_op = st.tuples(st.booleans(), st.booleans(), _amount, _amount, _amount, st.integers(0, 3))


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
        for k in range(len(index.blocks)):
            bound, top = _tight(index, k)
            # Stale or not, the bounds bound (the walk's skips are safe).
            for r, q in bound.items():
                assert index.bounds[k].get(r, -1) >= q
            if not index.stale[k]:
                # (A block's first entry may put an amount below zero in
                # its bound; the walk reads a missing one as -1 anyway.)
                kept = {r: q for r, q in index.bounds[k].items() if q >= 0}
                assert kept == bound
                assert {r: index.tops[k][r] for r in kept} == top
    assert sorted(live) == list(index)
