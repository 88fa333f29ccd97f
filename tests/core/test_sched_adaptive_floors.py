"""Floors kept through moves of the levels' order and of the poor levels
(``RuntimeHistory._drop_levels``), and a floor on top given out without its
exact rank (``adaptive_queue._surely_first``): each against the plain way."""

from __future__ import annotations

import copy
import random
from itertools import islice
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apportion.core.scheduling import adaptive_parts, adaptive_queue
from apportion.core.scheduling.adaptive import AdaptiveOrder, RuntimeHistory
from apportion.core.scheduling.adaptive_queue import AdaptiveQueue
from apportion.core.scheduling.jobs import Job, job

P = 1000
INF = float("inf")


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


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=False))
def test_a_floor_given_out_unresolved_leaves_the_order(rnd: random.Random) -> None:
    # Two histories and queues fed alike; one never gives a floor out
    # before its exact rank. Each order read in part, as a replay reads it.
    hs = [RuntimeHistory(), RuntimeHistory()]
    queues = [AdaptiveQueue(AdaptiveOrder(), h.signature, h.floors, h) for h in hs]
    waiting: list[str] = []
    for n in range(80):
        what = rnd.choice(["add", "add", "record", "record", "take"])
        if what == "add":
            j = drawn_job(rnd, f"j{n:02d}", submit=float(n))
            waiting.append(j.id)
            for q in queues:
                q.add(j)
        elif what == "record":
            j = drawn_job(rnd, f"d{n}")
            run = (j.runtime_estimate or 30.0) * rnd.choice([0.01, 0.3, 1.0, 2.0])
            for h in hs:
                h.record(j, run)
        else:
            now, took = 100.0 + n, rnd.randint(0, 3)
            first = list(islice(queues[0].ordered_at(now, INF, hs[0].rank), took))
            # (the generator runs as read: read within the patch)
            with mock.patch.object(adaptive_queue, "_surely_first", lambda *a: False):
                plain = list(islice(queues[1].ordered_at(now, INF, hs[1].rank), took))
            assert [j.id for j in first] == [j.id for j in plain]
            for j in first:
                for q in queues:
                    q.remove(j)


def test_a_floor_far_ahead_is_given_out_without_its_exact_rank() -> None:
    h = RuntimeHistory()
    for k in range(8):  # every level has a typical value and an error
        h.record(job(f"d{k}", {"cpu": P}, user="ann", runtime_estimate=100.0), 50.0)
    queue = AdaptiveQueue(AdaptiveOrder(), h.signature, h.floors, h)
    a = job("a", {"cpu": P}, user="ann", submit_time=0.0, runtime_estimate=100.0)
    b = job("b", {"cpu": P}, user="ann", submit_time=990.0, runtime_estimate=1e5)
    queue.add(a)
    queue.add(b)
    h.record(job("d9", {"cpu": P}, user="ann", runtime_estimate=100.0), 40.0)
    # a: a ratio of at least (1000 + 100) / 100 = 11 from its own
    # estimate; b's at most ~1.3 from its floor (~40 s): a comes first
    # without its rank, and a replay that cannot start it asks no more.
    it = queue.ordered_at(1000.0, INF, h.rank)
    assert next(it).id == "a"
    assert h.number(a) not in h.answers and h.number(b) not in h.answers
    assert next(it).id == "b"
