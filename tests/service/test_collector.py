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


def test_never_a_full_collection(collector: None) -> None:
    # The full generation's rule also weighs what survived since the last
    # one, which Python does not show: left to the collector itself.
    gc.collect()
    gc.set_threshold(100, 1, 1)
    for _ in range(4):
        gc.collect(1)  # the full count past its threshold
    for _ in range(2):
        gc.collect(0)  # and the middle one
    assert gc.get_count()[1] > 1 and gc.get_count()[2] > 1
    _, collected = paused_then_collected(Cycle(500))
    assert collected.generation == 1
