"""The collector paused while a scheduling cycle runs, and the collection
it owes run right after (``service/collector.py``)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from apportion.service.collector import NONE_OWED, owed_generation, paused_then_collected


@pytest.fixture
def collector() -> Iterator[None]:
    """Thresholds and the on/off state put back as they were."""
    thresholds, enabled = gc.get_threshold(), gc.isenabled()
    gc.enable()
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        if enabled:
            gc.enable()
        else:
            gc.disable()


class Cycle:
    """A cycle that makes ``n`` container objects, kept alive, and notes
    whether the collector ran while it ran."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.kept: list[list[int]] = []
        self.enabled_inside: bool | None = None
        self.collections_inside = 0

    def __call__(self) -> str:
        before = sum(g["collections"] for g in gc.get_stats())
        self.enabled_inside = gc.isenabled()
        self.kept = [[i] for i in range(self.n)]
        self.collections_inside = sum(g["collections"] for g in gc.get_stats()) - before
        return "decided"


@pytest.fixture
def started() -> Iterator[list[int]]:
    """The generation of each collection started meanwhile."""
    seen: list[int] = []

    def note(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            seen.append(info["generation"])

    gc.callbacks.append(note)
    try:
        yield seen
    finally:
        gc.callbacks.remove(note)


def test_no_collection_lands_in_the_cycle_and_the_owed_one_runs_after(
    collector: None, started: list[int]
) -> None:
    gc.collect()
    gc.set_threshold(100, 10, 10)
    cycle = Cycle(5000)  # fifty young collections' worth
    started.clear()
    value, collected = paused_then_collected(cycle)
    assert value == "decided"
    assert cycle.enabled_inside is False and cycle.collections_inside == 0
    assert gc.isenabled()
    assert collected.generation == 0 and collected.wall_s >= 0 and collected.cpu_s >= 0
    assert started[:1] == [0]  # the owed one, before anything else allocates


def test_a_middle_collection_is_run_when_the_middle_count_is_due(collector: None) -> None:
    gc.collect()
    gc.set_threshold(100, 2, 10)
    for _ in range(3):  # young collections raise the middle count past 2
        gc.collect(0)
    _, collected = paused_then_collected(Cycle(500))
    assert collected.generation == 1
    assert gc.get_count()[1] == 0


def test_nothing_owed_nothing_collected(collector: None) -> None:
    gc.collect()
    gc.set_threshold(100_000, 10, 10)
    _, collected = paused_then_collected(Cycle(10))
    assert collected is NONE_OWED
    assert owed_generation() == -1


def test_a_collector_paused_by_someone_else_stays_paused(collector: None) -> None:
    gc.set_threshold(100, 10, 10)
    gc.disable()
    cycle = Cycle(500)
    _, collected = paused_then_collected(cycle)
    assert collected is NONE_OWED and not gc.isenabled()


def test_the_collector_comes_back_when_the_cycle_raises(collector: None) -> None:
    def failing() -> None:
        raise RuntimeError("cycle failed")

    with pytest.raises(RuntimeError):
        paused_then_collected(failing)
    assert gc.isenabled()


def counted(monkeypatch: pytest.MonkeyPatch, counts: tuple[int, int, int],
            thresholds: tuple[int, int, int]) -> None:
    """The collector's counts and thresholds as given (read, not set)."""
    monkeypatch.setattr(gc, "get_count", lambda: counts)
    monkeypatch.setattr(gc, "get_threshold", lambda: thresholds)


@pytest.mark.parametrize(("counts", "owed"), [
    ((100, 0, 0), -1),  # the young count at its threshold, not past it
    ((101, 0, 0), 0),
    ((101, 10, 0), 0),
    ((101, 11, 0), 1),
    ((101, 11, 10), 1),
])
def test_the_owed_generation_at_the_thresholds(
    monkeypatch: pytest.MonkeyPatch, counts: tuple[int, int, int], owed: int
) -> None:
    counted(monkeypatch, counts, (100, 10, 10))
    assert owed_generation() == owed


@pytest.mark.parametrize("middle", [0, 11])
def test_a_due_full_collection_is_left_to_the_collector(
    monkeypatch: pytest.MonkeyPatch, middle: int
) -> None:
    # Not a middle one in its place: that would push the full count on and
    # reset the young one, and the full collection would never come.
    counted(monkeypatch, (101, middle, 11), (100, 10, 10))
    assert owed_generation() == -1


class Held:
    """A placed job: a container object that lives on for a few cycles."""

    __slots__ = ("me",)

    def __init__(self) -> None:
        self.me: Held | None = self  # a cycle: only the collector frees it


def test_full_collections_still_happen_in_the_leaders_pattern(collector: None) -> None:
    # The leader's objects are made inside paused cycles and freed on the
    # event loop: the collections owed after the cycles are all the collector
    # gets. The full count must still come due and be collected.
    gc.freeze()  # the test session's heap aside: what survives here counts
    try:
        gc.collect()
        gc.set_threshold(200, 2, 2)
        running: list[list[Held]] = []
        full_before = gc.get_stats()[2]["collections"]
        for _ in range(60):
            paused_then_collected(lambda: running.append([Held() for _ in range(300)]))
            if len(running) > 3:
                running.pop(0)  # the event loop: the oldest jobs end
        assert gc.get_stats()[2]["collections"] > full_before
    finally:
        gc.unfreeze()
