"""Floors kept through moves of the levels' order and of the poor levels
(``RuntimeHistory._drop_levels``), against floors taken afresh."""

from __future__ import annotations

import copy
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apportion.core.scheduling import adaptive_parts
from apportion.core.scheduling.adaptive import RuntimeHistory
from apportion.core.scheduling.jobs import Job, job

P = 1000


def drawn_job(rnd: random.Random, name: str, submit: float = 0.0) -> Job:
    return job(name, {"cpu": P * rnd.randint(1, 4)},
               user=rnd.choice([None, "ann", "bob", "cy"]), name=rnd.choice([None, "sim"]),
               submit_time=submit,
               runtime_estimate=rnd.choice([None, 0.5, 5.0, 60.0, 600.0, 1e5]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=False))
def test_each_kept_floor_is_the_one_taken_afresh(rnd: random.Random) -> None:
    # Run times far off and close alike: the levels' errors cross (their
    # order moves) and pass ``max_error`` both ways (the poor ones move).
    h = RuntimeHistory()
    jobs = [drawn_job(rnd, f"w{k}") for k in range(12)]
    for n in range(80):
        j = drawn_job(rnd, f"d{n}")
        h.record(j, (j.runtime_estimate or 30.0) * rnd.choice([0.001, 0.1, 1.0, 3.0, 5e3]))
        h.floors(jobs)
        h.stale_floors()
        fresh = copy.deepcopy(h)
        fresh.floor_cache.clear()
        fresh.floor_readers.clear()
        fresh.floor_levels.clear()
        table = fresh._floor_table()
        for number, floor in h.floor_cache.items():
            assert floor == fresh._floor(number, table)


def test_a_move_of_the_levels_drops_the_floors_of_the_levels_it_moved() -> None:
    h = RuntimeHistory()
    h.floor_levels = {"user": {1}, "size": {2}, "global": {3}}
    h.floor_cache = {1: 5.0, 2: 6.0, 3: 7.0}
    h._drop_levels(adaptive_parts._moved(("user", "size", "global"), ("user", "global", "size")))
    assert h.floor_cache == {1: 5.0} and sorted(h.floors_dropped) == [2, 3]
    assert adaptive_parts._moved(("a", "b"), ("a", "b")) == set()
