"""FreeIndex: the blocked, sorted index of buckets by one resource's free
amount, with per-block bounds, class masks and stale flags (what the
placement walk reads to skip blocks)."""

from __future__ import annotations

import pytest

from apportion.core.scheduling.freeindex import BLOCK, Entry, FreeIndex

CM = ("cpu", "memory")
CMG = ("cpu", "memory", "gpu")


def e(cpu: int, mem: int, bid: int, cid: int = 0) -> Entry:
    """An entry of the cpu index for a bucket of class ``cid`` (cpu, memory)."""
    return (cpu, cid, (cpu, mem), bid)


def g(cpu: int, mem: int, gpu: int, bid: int, cid: int = 1) -> Entry:
    """An entry for a bucket of a class with (cpu, memory, gpu)."""
    return (cpu, cid, (cpu, mem, gpu), bid)


def filled(n: int) -> FreeIndex:
    """``n`` entries of class 0 added in ascending order, memory zigzagging."""
    index = FreeIndex()
    for i in range(n):
        index.add(e(10 * i, (i * 7) % 50, i), CM)
    return index


def test_an_empty_index_has_nothing_to_walk() -> None:
    index = FreeIndex()
    assert len(index) == 0
    assert not index
    assert list(index) == []
    assert index.bisect(5) == (0, 0)
    assert index.start(5) == (0, 0, 0)
    assert BLOCK == 16


def test_the_first_entry_opens_a_block_with_its_bounds_and_class_bit() -> None:
    index = FreeIndex()
    first = e(4, 10, 7, cid=2)
    index.add(first, CM)
    assert len(index) == 1
    assert index
    assert index.blocks == [[first]]
    assert index.lasts == [first]
    assert index.last() == first
    assert index.bounds == [{"cpu": 4, "memory": 10}]
    assert index.masks == [0b100]
    assert index.stale == [set()]
    assert index.names == {2: CM}


def test_adds_keep_entries_sorted_and_raise_the_bounds_and_mask() -> None:
    index = FreeIndex()
    index.add(e(50, 3, 1), CM)
    index.add(e(20, 40, 2), CM)  # before the last: inserted in place
    index.add(e(90, 1, 3), CM)  # after the last: appended, the new last
    index.add(e(20, 5, 4), CM)
    assert list(index) == [e(20, 5, 4), e(20, 40, 2), e(50, 3, 1), e(90, 1, 3)]
    assert index.lasts == [e(90, 1, 3)]
    assert index.last() == e(90, 1, 3)
    assert index.bounds == [{"cpu": 90, "memory": 40}]
    assert len(index) == 4
    # A class with another resource adds it to the bound, however small:
    # a block holding a one-GPU bucket is not skipped for a one-GPU request.
    index.add(g(30, 2, 1, 5, cid=3), CMG)
    index.add(g(95, 2, 0, 6, cid=3), CMG)
    assert index.bounds == [{"cpu": 95, "memory": 40, "gpu": 1}]
    assert index.masks == [0b1001]
    assert index.names == {0: CM, 3: CMG}
    assert index.last() == g(95, 2, 0, 6, cid=3)


def test_a_resource_first_seen_at_minus_one_or_less_is_left_out_of_the_bound() -> None:
    # A node whose capacity shrank under what runs on it has negative free;
    # the walk reads a missing bound as -1, so nothing is lost.
    index = FreeIndex()
    index.add(e(5, 5, 1), CM)
    index.add(g(6, 5, -1, 2), CMG)
    assert index.bounds == [{"cpu": 6, "memory": 5}]
    index.add(g(7, 5, 0, 3), CMG)
    assert index.bounds == [{"cpu": 7, "memory": 5, "gpu": 0}]


def test_a_block_splits_above_twice_block_and_each_half_gets_its_own_bounds() -> None:
    index = filled(2 * BLOCK)
    assert [len(b) for b in index.blocks] == [32]
    index.add(e(320, 49, 32), CM)
    assert [len(b) for b in index.blocks] == [16, 17]
    left, right = index.blocks
    assert left[0] == e(0, 0, 0) and left[-1] == e(150, 5, 15)
    assert right[0] == e(160, 12, 16) and right[-1] == e(320, 49, 32)
    assert index.lasts == [e(150, 5, 15), e(320, 49, 32)]
    assert index.lens == [16, 17]
    assert index.bounds == [{"cpu": 150, "memory": 49}, {"cpu": 320, "memory": 49}]
    assert index.masks == [1, 1]
    assert index.stale == [set(), set()]
    assert len(index) == 33


def test_a_split_recomputes_bounds_and_masks_from_each_half() -> None:
    index = FreeIndex()
    for i in range(2 * BLOCK):
        index.add(e(i, 100 if i == 31 else 1, i), CM)
    # One class-1 bucket low down, with a gpu: only the left half has it.
    index.add(g(0, 2, 4, 99), CMG)
    assert [len(b) for b in index.blocks] == [16, 17]
    assert index.bounds == [
        {"cpu": 14, "memory": 2, "gpu": 4},
        {"cpu": 31, "memory": 100},
    ]
    assert index.masks == [0b11, 0b01]


def test_adds_into_an_inner_block_go_there_and_split_it() -> None:
    index = filled(33)  # [0..150] [160..320]
    for i in range(17):
        index.add(e(1 + i, 60, 100 + i, cid=1), CM)
    assert [len(b) for b in index.blocks] == [16, 17, 17]
    assert list(index) == sorted(index)
    assert index.bounds[0] == {"cpu": 14, "memory": 60}
    assert index.masks == [0b11, 0b11, 0b01]
    assert index.lasts == [b[-1] for b in index.blocks]


def test_remove_takes_the_entry_out_and_marks_a_block_whose_bound_it_set() -> None:
    index = FreeIndex()
    for entry in (e(10, 5, 1), e(20, 9, 2), e(30, 9, 3), e(40, 1, 4)):
        index.add(entry, CM)
    index.remove(e(20, 9, 2))  # held the memory bound with another: still exact
    assert list(index) == [e(10, 5, 1), e(30, 9, 3), e(40, 1, 4)]
    assert len(index) == 3
    assert index.stale == [set()]
    assert index.bounds == [{"cpu": 40, "memory": 9}]
    assert index.tops == [{"cpu": 1, "memory": 1}]
    index.remove(e(30, 9, 3))  # the last to hold the memory bound
    assert index.stale == [{"memory"}]
    index.recompute(0)
    assert index.stale == [set()]
    assert index.bounds == [{"cpu": 40, "memory": 5}]
    index.add(e(30, 9, 3), CM)
    index.remove(e(10, 5, 1))  # below every bound
    assert index.stale == [set()]
    index.remove(e(40, 1, 4))  # the last, and the cpu bound
    assert index.lasts == [e(30, 9, 3)]
    assert index.last() == e(30, 9, 3)
    assert index.stale == [{"cpu"}]
    index.recompute(0)
    assert index.bounds == [{"cpu": 30, "memory": 9}]
    assert index.masks == [1]


def test_remove_marks_on_any_resource_of_the_entrys_class() -> None:
    index = FreeIndex()
    index.add(e(10, 5, 1), CM)
    index.add(g(20, 1, 3, 2), CMG)
    index.add(e(30, 4, 3), CM)
    index.remove(g(20, 1, 3, 2))  # only its gpu set a bound
    assert index.stale == [{"gpu"}]
    index.recompute(0)
    assert index.bounds == [{"cpu": 30, "memory": 5}]
    assert index.masks == [1]
    assert index.stale == [set()]


def test_remove_of_a_missing_entry_raises_and_changes_nothing() -> None:
    index = FreeIndex()
    index.add(e(10, 5, 1), CM)
    index.add(e(20, 9, 2), CM)
    with pytest.raises(ValueError, match=r"\(20, 0, \(20, 9\), 0\) not in index"):
        index.remove(e(20, 9, 0))
    with pytest.raises(ValueError, match="not in index"):
        index.remove(e(15, 9, 3))
    assert list(index) == [e(10, 5, 1), e(20, 9, 2)]
    assert len(index) == 2
    assert index.stale == [set()]


def test_emptying_a_block_drops_it_and_its_bookkeeping() -> None:
    index = filled(33)
    for i in range(16):
        index.remove(e(10 * i, (i * 7) % 50, i))
    assert [len(b) for b in index.blocks] == [17]
    assert index.lasts == [e(320, 24, 32)]
    assert len(index.bounds) == len(index.masks) == len(index.stale) == 1
    assert index.bounds == [{"cpu": 320, "memory": 47}]
    assert len(index) == 17
    for i in range(16, 33):
        index.remove(e(10 * i, (i * 7) % 50, i))
    assert not index
    assert (index.blocks, index.lasts, index.lens, index.bounds, index.masks, index.stale) == (
        [], [], [], [], [], [])


def test_bisect_finds_the_first_entry_with_at_least_the_amount() -> None:
    index = filled(33)  # cpu 0, 10, ..., 320; blocks of 16 and 17
    assert index.bisect(0) == (0, 0)
    assert index.bisect(10) == (0, 1)  # an entry of exactly that amount counts
    assert index.bisect(11) == (0, 2)
    assert index.bisect(150) == (0, 15)
    assert index.bisect(151) == (1, 0)
    assert index.bisect(160) == (1, 0)
    assert index.bisect(170) == (1, 1)
    assert index.bisect(320) == (1, 16)
    assert index.bisect(321) == (2, 0)


def test_bisect_counts_entries_of_any_class_at_the_amount() -> None:
    index = FreeIndex()
    index.add(e(5, 1, 1, cid=0), CM)
    index.add(e(7, 1, 2, cid=0), CM)
    index.add(e(7, 1, 3, cid=1), CM)
    assert index.bisect(7) == (0, 1)
    assert index.start(7) == (0, 1, 2)


def test_start_finds_and_counts_the_entries_with_enough() -> None:
    index = filled(100)  # amounts 0, 10, ..., 990
    sizes = [len(b) for b in index.blocks]
    assert sizes == [16, 16, 16, 16, 16, 20]
    # Counted on either side of the block found (the first half from the
    # size, the second by summing): both give the entries from there on.
    assert index.start(0) == (0, 0, 100)
    assert index.start(30) == (0, 3, 97)
    assert index.start(31) == (0, 4, 96)
    assert index.start(160) == (1, 0, 84)
    assert index.start(370) == (2, 5, 63)
    assert index.start(480) == (3, 0, 52)
    assert index.start(790) == (4, 15, 21)
    assert index.start(800) == (5, 0, 20)
    assert index.start(990) == (5, 19, 1)
    assert index.start(991) == (6, 0, 0)
    assert index.start(555) == (3, 8, 44)
    assert index.start(555)[:2] == index.bisect(555)


def _loosened() -> FreeIndex:
    """A block whose memory and gpu bounds and class mask went loose."""
    index = FreeIndex()
    index.add(g(10, 3, 2, 1, cid=1), CMG)
    index.add(e(20, 8, 2, cid=0), CM)
    index.add(e(30, 1, 3, cid=0), CM)
    index.remove(e(20, 8, 2))
    index.remove(g(10, 3, 2, 1, cid=1))
    return index


def test_recompute_tightens_a_blocks_bounds_to_its_buckets() -> None:
    index = _loosened()
    # Still bounds, loosely: the removed buckets' amounts and class.
    assert index.bounds == [{"cpu": 30, "memory": 8, "gpu": 2}]
    assert index.masks == [0b11]
    assert index.stale == [{"memory", "gpu"}]
    index.recompute(0)
    assert index.bounds == [{"cpu": 30, "memory": 1}]
    assert index.masks == [0b01]
    assert index.stale == [set()]


def test_recompute_keeps_only_the_classes_and_amounts_left() -> None:
    index = FreeIndex()
    index.add(e(10, 3, 1, cid=0), CM)
    index.add(g(20, 2, -1, 2, cid=1), CMG)  # negative free gpu: no bound
    index.add(g(30, 1, 2, 3, cid=1), CMG)
    index.remove(e(10, 3, 1, cid=0))
    index.remove(g(30, 1, 2, 3, cid=1))
    index.recompute(0)
    assert index.masks == [0b10]
    assert index.bounds == [{"cpu": 20, "memory": 2}]
    assert index.stale == [set()]


def test_remove_after_a_recompute_left_a_resource_below_zero_out() -> None:
    # Negative free (a node whose capacity shrank under what it runs) is
    # left out of a recomputed bound; removing such an entry raised KeyError.
    index = FreeIndex()
    index.add(e(-1, 2, 1), CM)
    index.add(e(-2, 3, 2), CM)
    index.recompute(0)
    assert index.bounds == [{"memory": 3}]
    index.remove(e(-1, 2, 1))
    assert list(index) == [e(-2, 3, 2)]
    assert index.stale == [{"cpu"}]  # read as -1, which it had: maybe the bound
    index.recompute(0)
    assert index.bounds == [{"memory": 3}]
    assert index.stale == [set()]


def test_tighten_makes_one_resources_bound_exact_and_leaves_the_others() -> None:
    index = _loosened()
    assert index.stale == [{"memory", "gpu"}]
    index.tighten(0, "memory")  # a walk that tests memory reads only memory
    assert index.bounds == [{"cpu": 30, "memory": 1, "gpu": 2}]
    assert index.tops[0]["memory"] == 1
    assert index.masks == [0b01]  # the class mask is tightened on the way
    assert index.stale == [{"gpu"}]
    index.tighten(0, "gpu")  # no entry has one left: dropped, read as -1
    assert index.bounds == [{"cpu": 30, "memory": 1}]
    assert index.stale == [set()]


def test_an_add_above_a_loose_bound_makes_it_exact() -> None:
    index = FreeIndex()
    index.add(e(10, 5, 1), CM)
    index.add(e(20, 9, 2), CM)
    index.remove(e(20, 9, 2))
    assert index.stale == [{"cpu", "memory"}]
    index.add(e(30, 7, 3), CM)  # above the loose cpu bound, below memory's
    assert index.stale == [{"memory"}]
    assert index.bounds == [{"cpu": 30, "memory": 9}]
    assert index.tops[0]["cpu"] == 1
