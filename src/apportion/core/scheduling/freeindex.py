"""A sorted index of buckets by one resource's free amount, in blocks that
know what else their buckets have free.

The placement walk goes up (or down) one resource's index from the first
bucket with enough of it. On a fleet that bin-packing has filled, most of
the buckets it meets have enough of that resource but not of another one
(enough cpu, too little memory), and a plain sorted list makes it look at
each of them. Here the entries sit in blocks of a few dozen, in the same
order, and every block keeps an upper bound of each resource's free amount
over its buckets and a superset of their node classes (a bit mask). A block
whose bound is short of any requested resource, or that holds no class the
job may use, cannot contain a fitting bucket and is skipped whole; inside
the other blocks the walk checks every entry as before. So the walk visits
the same buckets in the same order as over a flat list, minus some that
could never have been chosen: the outcome is the same, only cheaper.

The bounds are kept cheap: adding a bucket raises them; removing one leaves
them (still an upper bound) and a block that has lost an entry that may have
set a bound recomputes them from its remaining buckets when a walk next
relies on them. Each bound counts the entries that hold it, so removing one
of several that share the largest amount (common: free amounts come in
whole cores and GiB) keeps the bound exact and needs no recompute; in the
cycle benchmark two thirds of the removes that used to mark a block stale
were such ties (bench/README.md, h23-cycle).
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterator, Sequence
from typing import Any

BLOCK = 16
"""Target entries per block; a block splits at twice that."""

Entry = tuple[int, int, tuple[int, ...], int]
"""(free amount, class id, free vector, bucket id): unique without the id."""


class FreeIndex:
    """Entries ``(free amount, class id, free vector, bucket id)`` in
    ascending order, in blocks."""

    __slots__ = ("blocks", "bounds", "lasts", "lens", "masks", "names", "size", "stale", "tops")

    def __init__(self) -> None:
        self.names: dict[int, Sequence[str]] = {}
        """Class id -> the class's resource names (what a free vector holds)."""
        self.blocks: list[list[Entry]] = []
        self.lasts: list[Entry] = []
        """Last entry of each block (to find the block of an entry)."""
        self.lens: list[int] = []
        """Entries per block: ``count_from`` sums these ints (one C loop over
        a list) instead of calling len() on each block."""
        self.bounds: list[dict[str, int]] = []
        """Per block: at least the largest free amount of each resource."""
        self.tops: list[dict[str, int]] = []
        """Per block, while not stale: per resource of ``bounds`` with an
        amount of zero or more, how many entries hold exactly that amount
        (the bound is exact then, and stays so while one is left)."""
        self.masks: list[int] = []
        """Per block: at least the bits of the classes of its buckets."""
        self.stale: list[bool] = []
        """Per block: an entry that may have set a bound left since the
        bounds were computed (they still bound, maybe loosely): recompute
        before relying on them to skip."""
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def __bool__(self) -> bool:
        return self.size > 0

    def last(self) -> Entry:
        return self.lasts[-1]

    def __iter__(self) -> Iterator[Entry]:
        for block in self.blocks:
            yield from block

    def add(self, entry: Entry, names: Sequence[str]) -> None:
        """Add ``entry`` for a bucket of a class with resources ``names``."""
        self.size += 1
        _, cid, free, _ = entry
        bit = 1 << cid
        if cid not in self.names:
            self.names[cid] = names
        lasts = self.lasts
        if not lasts:
            self.blocks.append([entry])
            lasts.append(entry)
            self.lens.append(1)
            self.bounds.append(dict(zip(names, free, strict=True)))
            self.tops.append(dict.fromkeys(names, 1))
            self.masks.append(bit)
            self.stale.append(False)
            return
        k = bisect_left(lasts, entry)
        if k == len(lasts):
            k -= 1
            self.blocks[k].append(entry)
            lasts[k] = entry
        else:
            insort(self.blocks[k], entry)
        self.lens[k] += 1
        bound = self.bounds[k]
        top = self.tops[k]
        for r, q in zip(names, free, strict=True):
            b = bound.get(r, -1)
            if q > b:
                bound[r] = q
                top[r] = 1
            elif q == b and q >= 0:
                top[r] += 1
        self.masks[k] |= bit
        if self.lens[k] > 2 * BLOCK:
            self._split(k)

    def remove(self, entry: Entry) -> None:
        """Remove ``entry``."""
        lasts = self.lasts
        k = bisect_left(lasts, entry)
        block = self.blocks[k]
        i = bisect_left(block, entry)
        if i >= len(block) or block[i] != entry:
            raise ValueError(f"{entry} not in index")
        del block[i]
        self.size -= 1
        if not block:
            del self.blocks[k], lasts[k], self.lens[k], self.bounds[k], self.masks[k]
            del self.stale[k], self.tops[k]
            return
        self.lens[k] -= 1
        lasts[k] = block[-1]
        if not self.stale[k]:
            bound = self.bounds[k]
            top = self.tops[k]
            for r, q in zip(self.names[entry[1]], entry[2], strict=True):
                # A bound below zero is left out (``recompute``), and the
                # walk reads it as -1: a node whose capacity shrank under
                # what it runs has such amounts.
                b = bound.get(r, -1)
                if q >= b:
                    if q == b and b >= 0 and top[r] > 1:
                        top[r] -= 1  # another entry still holds it
                        continue
                    self.stale[k] = True
                    break

    def bisect(self, amount: int) -> tuple[int, int]:
        """(block, offset) of the first entry with at least ``amount``; block
        is ``len(blocks)`` when there is none."""
        key: Any = (amount, -1)  # sorts before every entry of that amount
        k = bisect_left(self.lasts, key)
        if k == len(self.lasts):
            return k, 0
        return k, bisect_left(self.blocks[k], key)

    def count_from(self, k: int, i: int) -> int:
        """How many entries lie at or after (block ``k``, offset ``i``)."""
        lens = self.lens
        nb = len(lens)
        if k >= nb:
            return 0
        # Summed on the shorter side of k (the walk asks this for every
        # requested resource of every job it places).
        if k < nb // 2:
            return self.size - sum(lens[:k]) - i
        return sum(lens[k:]) - i

    def _split(self, k: int) -> None:
        block = self.blocks[k]
        half = len(block) // 2
        left, right = block[:half], block[half:]
        self.blocks[k:k + 1] = [left, right]
        self.lasts[k:k + 1] = [left[-1], right[-1]]
        self.lens[k:k + 1] = [half, len(block) - half]
        self.bounds[k:k + 1] = [{}, {}]
        self.tops[k:k + 1] = [{}, {}]
        self.masks[k:k + 1] = [0, 0]
        self.stale[k:k + 1] = [False, False]
        self.recompute(k)
        self.recompute(k + 1)

    def recompute(self, k: int) -> None:
        """Tighten block ``k``'s bounds to its buckets."""
        # Entries grouped by their classes' resource names (a fleet has few
        # such tuples, however many classes): then each bound is one max()
        # over a column, not a comparison per entry and resource.
        mask = 0
        names = self.names
        groups: dict[Sequence[str], list[tuple[int, ...]]] = {}
        for _, cid, free, _ in self.blocks[k]:
            mask |= 1 << cid
            key = names[cid]
            group = groups.get(key)
            if group is None:
                groups[key] = [free]
            else:
                group.append(free)
        bound: dict[str, int] = {}
        top: dict[str, int] = {}
        for key, frees in groups.items():
            for r, column in zip(key, zip(*frees, strict=True), strict=True):
                q = max(column)
                b = bound.get(r, -1)
                if q > b:
                    bound[r] = q
                    top[r] = column.count(q)
                elif q == b and q >= 0:
                    top[r] += column.count(q)
        self.bounds[k] = bound
        self.tops[k] = top
        self.masks[k] = mask
        self.stale[k] = False
