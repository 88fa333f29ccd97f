"""The garbage collector's work moved out of a scheduling cycle.

A big cycle (10,000 nodes, 10,000 waiting) makes some 15,000 container
objects; with the server's thresholds (``server/app.py``) a young or middle
collection landing in it was the cycle's p99 (bench/README.md, h28-cycle and
h29-cycle, for the figures). The leader's loop therefore runs a cycle with
the collector paused and then, in the same thread, the collection the paused
one owes, before it turns to the cycle's grants. Nothing is skipped: the
collection still runs, where the leader would otherwise wait for its next
cycle; its time is returned so that it can be reported beside the cycle's
own (``bench_scheduler.py`` prints both, and the cycle with it).

A full collection is never run here: when one may be due it is left to the
collector's own rule (which also weighs what survived since the last one),
and that fires at the first allocation after the collector is back on.
Running a middle one instead would reset the young count and push the full
count on, so a leader, whose long-lived objects are made inside paused
cycles, would never collect its oldest generation.

Costs: the one young collection after a pause walks everything the cycle
made, so it is longer than any one of the collections it replaces and it
holds the GIL meanwhile: the event loop stalls longer per collection, though
not more in all (bench/README.md, h29-cycle). The pause is process-wide:
the event loop's own allocations meanwhile count towards the same collection,
which runs as soon as the cycle ends. Core code never touches the collector;
this helper is the one place that does, and both the leader
(``jobs/scheduling.py``) and the benchmark call it.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

OLDEST_OWED = 1
"""The oldest generation collected after the work. A full collection is
left to the collector's own rule, which also weighs how much survived since
the last one (not readable from Python); see ``owed_generation``."""


@dataclass(frozen=True, slots=True)
class OwedCollection:
    """The collection run after the work: its generation (-1 for none owed)
    and its wall and thread CPU seconds."""

    generation: int
    wall_s: float
    cpu_s: float


NONE_OWED = OwedCollection(-1, 0.0, 0.0)


def owed_generation() -> int:
    """The generation the collector would collect now, had it not been
    paused (its own rule: the young count past its threshold starts a
    collection of the oldest generation whose count is past its own), at
    most ``OLDEST_OWED``; -1 when none is due, and -1 too when the full
    count is past its threshold: that one is the collector's to decide (it
    does at the first allocation once it is back on), and a middle one run
    in its place would add to the full count and reset the young one, so the
    full collection would never come."""
    counts, thresholds = gc.get_count(), gc.get_threshold()
    if thresholds[0] == 0 or counts[0] <= thresholds[0]:
        return -1
    if counts[2] > thresholds[2]:
        return -1
    for generation in range(OLDEST_OWED, 0, -1):
        if counts[generation] > thresholds[generation]:
            return generation
    return 0


def paused_then_collected(work: Callable[[], T]) -> tuple[T, OwedCollection]:
    """``work()`` with the collector paused, then the collection it owes
    (``owed_generation``), timed. With the collector already off (someone
    else's pause) nothing is collected, and it stays off."""
    if not gc.isenabled():
        return work(), NONE_OWED
    gc.disable()
    try:
        value = work()
    finally:
        gc.enable()
    generation = owed_generation()
    if generation < 0:
        return value, NONE_OWED
    wall, cpu = time.perf_counter(), time.thread_time()
    gc.collect(generation)
    return value, OwedCollection(generation, time.perf_counter() - wall, time.thread_time() - cpu)
