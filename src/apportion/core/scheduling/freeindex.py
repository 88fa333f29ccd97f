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

Staleness is per resource: a block records which of its bounds may be
loose, and a walk tightens only the ones it tests (``tighten``: one column
of the block), not every resource of every class in it. A walk of a cpu and
memory job that passes a block whose cpu or GPU bound went loose reads its
memory bound as it is; the full ``recompute`` cost 3-4 times one column
(bench/README.md, h24-cycle).
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterator, Sequence
from typing import Any

BLOCK = 16
"""Target entries per block; a block splits at twice that."""

Entry = tuple[int, int, tuple[int, ...], int]
"""(free amount, class id, free vector, bucket id): unique without the id."""

_UNBOUNDED = 1 << 62
"""The task count a fit starts from: no requested resource has bounded it yet."""


class FreeIndex:
    """Entries ``(free amount, class id, free vector, bucket id)`` in
    ascending order, in blocks."""

    __slots__ = ("blocks", "bounds", "lasts", "lens", "masks", "names", "pos", "size", "stale",
                 "tops")

    def __init__(self) -> None:
        self.names: dict[int, Sequence[str]] = {}
        """Class id -> the class's resource names (what a free vector holds)."""
        self.pos: dict[str, dict[int, int]] = {}
        """Resource -> class id -> its place in that class's free vector
        (``tighten`` reads one column with it)."""
        self.blocks: list[list[Entry]] = []
        self.lasts: list[Entry] = []
        """Last entry of each block (to find the block of an entry)."""
        self.lens: list[int] = []
        """Entries per block: ``start`` sums these ints (one C loop over
        a list) instead of calling len() on each block."""
        self.bounds: list[dict[str, int]] = []
        """Per block: at least the largest free amount of each resource."""
        self.tops: list[dict[str, int]] = []
        """Per block, while not stale: per resource of ``bounds`` with an
        amount of zero or more, how many entries hold exactly that amount
        (the bound is exact then, and stays so while one is left)."""
        self.masks: list[int] = []
        """Per block: at least the bits of the classes of its buckets."""
        self.stale: list[set[str]] = []
        """Per block: the resources whose bound an entry that may have set it
        left since it was computed (it still bounds, maybe loosely): tighten
        it before relying on it to skip. Empty: every bound is exact."""
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
            self._learn(cid, names)
        lasts = self.lasts
        if not lasts:
            self.blocks.append([entry])
            lasts.append(entry)
            self.lens.append(1)
            self.bounds.append(dict(zip(names, free, strict=True)))
            self.tops.append(dict.fromkeys(names, 1))
            self.masks.append(bit)
            self.stale.append(set())
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
        loose = self.stale[k]
        for r, q in zip(names, free, strict=True):
            b = bound.get(r, -1)
            if q > b:
                bound[r] = q
                top[r] = 1
                if loose:
                    # Above a bound that bounds every other entry: the bound
                    # is exact now, held by this one entry.
                    loose.discard(r)
            elif q == b and q >= 0:
                top[r] += 1  # (counted wrong while ``r`` is loose; unread then)
        self.masks[k] |= bit
        if self.lens[k] > 2 * BLOCK:
            self._split(k)

    def _learn(self, cid: int, names: Sequence[str]) -> None:
        """Note the resource names of class ``cid``, met for the first time."""
        self.names[cid] = names
        pos = self.pos
        for i, r in enumerate(names):
            col = pos.get(r)
            if col is None:
                col = pos[r] = {}
            col[cid] = i

    def remove(self, entry: Entry) -> None:
        """Remove ``entry``."""
        k = bisect_left(self.lasts, entry)
        block = self.blocks[k]
        i = bisect_left(block, entry)
        if i >= len(block) or block[i] != entry:
            raise ValueError(f"{entry} not in index")
        self._remove_at(k, block, i, entry)

    def _remove_at(self, k: int, block: list[Entry], i: int, entry: Entry) -> None:
        """Remove ``entry``, found at ``block[i]`` of block ``k``."""
        lasts = self.lasts
        del block[i]
        self.size -= 1
        if not block:
            del self.blocks[k], lasts[k], self.lens[k], self.bounds[k], self.masks[k]
            del self.stale[k], self.tops[k]
            return
        self.lens[k] -= 1
        lasts[k] = block[-1]
        bound = self.bounds[k]
        top = self.tops[k]
        loose = self.stale[k]
        for r, q in zip(self.names[entry[1]], entry[2], strict=True):
            # A bound below zero is left out (``recompute``), and the walk
            # reads it as -1: a node whose capacity shrank under what it
            # runs has such amounts.
            b = bound.get(r, -1)
            if q >= b and r not in loose:
                if q == b and b >= 0 and top[r] > 1:
                    top[r] -= 1  # another entry still holds it
                    continue
                loose.add(r)

    def move(self, old: Entry, new: Entry, names: Sequence[str]) -> None:
        """Replace ``old`` by ``new``, an entry of the same bucket and class
        with another free vector: ``remove`` then ``add``, in one step when
        ``new`` stays in ``old``'s block (one bisect of the blocks, no split
        or drop to check; a grant moves a bucket a few entries down). A
        resource whose amount did not change keeps its bound as it was: the
        entry leaves and comes back with the same amount."""
        lasts = self.lasts
        k = bisect_left(lasts, old)
        block = self.blocks[k]
        n = len(block)
        i = bisect_left(block, old)
        # Where ``add`` would put ``new`` once ``old`` is out: past the
        # block before, and before this block's last entry left (or in the
        # last block, which takes whatever sorts after every block).
        if i >= n or block[i] != old:
            raise ValueError(f"{old} not in index")
        if (n == 1 or (k and not lasts[k - 1] < new)
                or (not new < (block[-1] if i < n - 1 else block[-2])
                    and k < len(lasts) - 1)):
            self._remove_at(k, block, i, old)
            self.add(new, names)
            return
        del block[i]
        block.insert(bisect_left(block, new), new)
        lasts[k] = block[-1]
        bound = self.bounds[k]
        top = self.tops[k]
        loose = self.stale[k]
        for r, qo, qn in zip(names, old[2], new[2], strict=True):
            if qo == qn:
                continue
            b = bound.get(r, -1)
            if qo >= b and r not in loose:  # as ``remove``
                if qo == b and b >= 0 and top[r] > 1:
                    top[r] -= 1
                else:
                    loose.add(r)
            if qn > b:  # as ``add``
                bound[r] = qn
                top[r] = 1
                loose.discard(r)
            elif qn == b and qn >= 0:
                top[r] += 1

    def bisect(self, amount: int) -> tuple[int, int]:
        """(block, offset) of the first entry with at least ``amount``; block
        is ``len(blocks)`` when there is none."""
        key: Any = (amount, -1)  # sorts before every entry of that amount
        k = bisect_left(self.lasts, key)
        if k == len(self.lasts):
            return k, 0
        return k, bisect_left(self.blocks[k], key)

    def start(self, amount: int) -> tuple[int, int, int]:
        """``bisect`` and how many entries lie from there on (in one call:
        the walk asks this for every requested resource of every job it
        places)."""
        key: Any = (amount, -1)
        lasts = self.lasts
        k = bisect_left(lasts, key)
        nb = len(lasts)
        if k == nb:
            return k, 0, 0
        i = bisect_left(self.blocks[k], key)
        # Summed on the shorter side of k.
        lens = self.lens
        if k < nb // 2:
            return k, i, self.size - sum(lens[:k]) - i
        return k, i, sum(lens[k:]) - i

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
        self.stale[k:k + 1] = [set(), set()]
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
        self.stale[k] = set()

    def tightened(self, k: int, need: Sequence[tuple[str, int]], loose: set[str]) -> bool:
        """Tighten block ``k``'s loose bounds among the resources of ``need``
        and its class mask (one column each); when none of them is loose
        (or ``need`` is empty: a walk of one resource reads only the mask),
        recompute the block whole, as every stale block was before: its
        class mask may be loose too (a class's last entry left), and a
        tight mask skips blocks for constrained walks. Always True (the
        walk then tests the block again)."""
        done = False
        for r, _ in need:
            if r in loose:
                self.tighten(k, r)
                done = True
        if not done:
            self.recompute(k)
        return True

    def tighten(self, k: int, resource: str) -> None:
        """Make block ``k``'s bound of ``resource`` exact (and its class mask),
        from that one column of its entries."""
        col = self.pos.get(resource, {})
        mask = 0
        best = -1
        held = 0
        for _, cid, free, _ in self.blocks[k]:
            mask |= 1 << cid
            i = col.get(cid)
            if i is not None:
                q = free[i]
                if q > best:
                    best = q
                    held = 1
                elif q == best:
                    held += 1
        bound = self.bounds[k]
        top = self.tops[k]
        if best >= 0:
            bound[resource] = best
            top[resource] = held
        else:  # left out below zero, as ``recompute`` does
            bound.pop(resource, None)
            top.pop(resource, None)
        self.masks[k] = mask
        self.stale[k].discard(resource)

    def fitting(
        self,
        k0: int,
        i0: int,
        loose: bool,
        vmask: int,
        need: tuple[tuple[str, int], ...],
        first_of: dict[int, tuple[int, int]],
        need_of: dict[int, tuple[tuple[int, int], ...]],
        walked_of: dict[int, tuple[int, int]],
    ) -> Iterator[tuple[Entry, int]]:
        """The entries a placement walk keeps, in walk order, each with how
        many tasks fit its free vector (at least one): from block ``k0``,
        offset ``i0`` (where the walked resource's bisect found enough of
        it) upwards, or down from the top to there when ``loose``.

        A block whose bound is short of a requested resource other than the
        walked one (``need``: resource, amount), or whose class mask misses
        every feasible class (``vmask``), is skipped whole; an entry is kept
        when its class is feasible and its free vector holds the request:
        ``first_of`` is per class the (position, amount) tested first (the
        one that turns most entries down), ``need_of`` every other one's,
        ``walked_of`` the walked resource's. The caller may stop at any
        point; the index must not change while it walks.

        The native module (``_freeindex_c``) answers the same calls in C;
        ``tests/core/test_sched_freeindex_native.py`` holds the two to the
        same answers."""
        # The first resource of ``need`` tested on its own, the rest (a GPU
        # job's cpu or memory) in a loop: most jobs ask for two resources,
        # and a block test without the loop is most of what a walk does
        # with the ~20 blocks it passes on a filled cluster (bench/README.md,
        # h24-cycle).
        r1, q1 = need[0] if need else ("", -1)
        rest = need[1:]
        blocks, bounds, masks, stale = self.blocks, self.bounds, self.masks, self.stale
        nb = len(blocks)
        for k in range(nb - 1, k0 - 1, -1) if loose else range(k0, nb):
            # The bound first: it turns down most blocks a walk passes, and
            # a plain job's mask takes every class.
            bound = bounds[k]
            if bound.get(r1, -1) < q1 or not masks[k] & vmask:
                continue
            short = False
            for r, q in rest:
                if bound.get(r, -1) < q:
                    short = True
                    break
            if short:
                continue
            loose_rs = stale[k]
            if loose_rs and self.tightened(k, need, loose_rs):
                # Loose bounds let it in, and the ones it tests are tight
                # now: look again. (The bound check is written out twice
                # on purpose: as a helper with any() it cost 10 % of
                # placements/s in bench_scheduler.)
                if not masks[k] & vmask:
                    continue
                bound = bounds[k]
                for r, q in need:
                    if bound.get(r, -1) < q:
                        short = True
                        break
                if short:
                    continue
            block = blocks[k]
            if k == k0 and i0:
                block = block[i0:]
            for entry in reversed(block) if loose else block:
                # The entry carries the class and free vector: most buckets
                # fail here without being looked up, on the first other
                # requested resource (two thirds of the entries a walk
                # meets in the placements benchmark). Those that pass count
                # the tasks that fit (below one where a resource is short).
                cid = entry[1]
                first_pos = first_of.get(cid)
                if first_pos is None:
                    continue
                free = entry[2]
                j, q = first_pos
                if free[j] < q:
                    continue
                fit = _UNBOUNDED
                for j, q in need_of[cid]:
                    n = free[j] // q
                    if n < fit:
                        fit = n
                        if n <= 0:
                            break
                if fit <= 0:
                    continue
                j, q = walked_of[cid]
                n = free[j] // q
                if n < fit:
                    fit = n
                yield entry, fit
