"""``AdaptiveQueue`` (the waiting jobs grouped by signature, merged by
response ratio) gives ``AdaptiveOrder.order``'s order, on generated queues
and histories, as jobs come and go."""

from __future__ import annotations

import copy
import math
import random
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adaptive_support import Step, steps, take_step
from apportion.core.model import Node
from apportion.core.scheduling import adaptive
from apportion.core.scheduling.adaptive import AdaptiveOrder, RuntimeHistory
from apportion.core.scheduling.adaptive_queue import AdaptiveQueue
from apportion.core.scheduling.jobs import Job, job
from apportion.core.scheduling.policies import OrderContext
from apportion.core.scheduling.state import ClusterState

P = 1000
INF = math.inf
STATE = ClusterState([Node("n", {"cpu": P})])


def context(h: RuntimeHistory, now: float, bound: float, batch: bool) -> OrderContext:
    return OrderContext(now, {}, STATE, h.estimate, 0.0, bound, h.rank,
                        h.ranks if batch else None)


def queue_of(h: RuntimeHistory, how: str) -> AdaptiveQueue:
    """A queue of ranks asked afresh ("plain"), from floors, or kept."""
    order = AdaptiveOrder()
    if how == "kept":
        return AdaptiveQueue(order, h.signature, h.floors, h)
    return AdaptiveQueue(order, h.signature, h.floors if how == "floors" else None)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps, st.sampled_from([INF, 0.0, 20.0, 97.0]), st.booleans(),
       st.sampled_from([100.0, 150.0]), st.sampled_from(["plain", "floors", "kept"]))
def test_the_merge_is_the_plain_order_as_jobs_come_and_go(
    drawn: list[Step],
    bound: float, batch: bool, now: float, how: str,
) -> None:
    h = RuntimeHistory()
    order = AdaptiveOrder()
    queue = queue_of(h, how)
    waiting: dict[str, Job] = {}
    for n, step in enumerate(drawn):
        take_step(n, step, h, queue, waiting)
        ctx = context(h, now, bound, batch)
        got = list(queue.ordered(ctx))  # first: the plain order fills the answers
        plain = [j.id for j in order.order(list(waiting.values()), ctx)]
        assert [j.id for j in got] == plain
        assert len(queue) == len(waiting)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps, st.sampled_from([0.0, 1e6, 1e301, 1e308]))
def test_floors_are_exact_ranks_or_lie_below_them(
    drawn: list[Step],
    wild: float,
) -> None:
    # Floors are kept across records; each is checked against a history
    # that answers afresh. ``wild``: a run time past 1e300 (1e308: two of
    # them make a typical value infinite, and the errors then infinite or NaN).
    h = RuntimeHistory()
    waiting: list[Job] = []
    for n, (what, (submit, user, name, procs, est), _, factor) in enumerate(drawn):
        j = job(f"j{n:02d}", {"cpu": P * procs}, user=user, name=name,
                submit_time=submit, runtime_estimate=est)
        if what == "add":
            waiting.append(j)
        elif what == "record":
            h.record(j, wild if factor == 3.0 and wild else (est or 30.0) * factor)
        ranks, exact = h.floors(waiting)
        h.answers.clear()  # the exact ranks, from nothing kept
        for w, r, known in zip(waiting, ranks, exact, strict=True):
            plain = h.rank(w)
            if known:
                assert r == plain or (r != r and plain != plain)
            else:
                assert r is not None and plain is not None and 0.0 <= r < plain


@given(st.lists(st.tuples(st.sampled_from([0.0, 10.0, 50.0]),
                          st.sampled_from([None, 0.0, 7.0, 1e6, INF, math.nan])),
                max_size=12),
       st.sampled_from([INF, 30.0]))
def test_ranks_that_make_a_ratio_nan_take_the_plain_sort(
        drawn: list[tuple[float, float | None]], bound: float) -> None:
    # The signature here is the rank itself: each group shares one.
    ranks = {f"j{k:02d}": r for k, (_, r) in enumerate(drawn)}
    queue = AdaptiveQueue(AdaptiveOrder(), lambda j: ("r", repr(ranks[j.id])))
    jobs = [job(f"j{k:02d}", {"cpu": P}, submit_time=t) for k, (t, _) in enumerate(drawn)]
    jobs.reverse()  # not in submit order
    for j in jobs:
        queue.add(j)
    ctx = OrderContext(60.0, {}, STATE, lambda j: None, 0.0, bound, lambda j: ranks[j.id])
    # A NaN leaves the plain sort to the order the jobs came in: as added.
    assert [j.id for j in queue.ordered(ctx)] == \
        [j.id for j in AdaptiveOrder().order(jobs, ctx)]


def test_a_queue_for_shortest_first_is_refused() -> None:
    with pytest.raises(ValueError):
        AdaptiveQueue(AdaptiveOrder("sjf"), RuntimeHistory().signature)


def random_event(rnd: random.Random, n: int, h: RuntimeHistory, queue: AdaptiveQueue,
                 waiting: dict[str, Job], whats: list[str], users: list[str | None],
                 factors: list[float]) -> None:
    """One of ``whats`` (a job added, one removed, one recorded) drawn."""
    what = rnd.choice(whats)
    j = job(f"j{n:02d}", {"cpu": P * rnd.randint(1, 4)},
            user=rnd.choice(users), name=rnd.choice([None, "sim"]),
            submit_time=rnd.choice([0.0, 1.0, 10.0, 50.0, 99.0]),
            runtime_estimate=rnd.choice([None, 0.0, 0.5, 5.0, 60.0, 600.0, 1e5]))
    if what == "add":
        waiting[j.id] = j
        queue.add(j)
    elif what == "remove" and waiting:
        queue.remove(waiting.pop(rnd.choice(sorted(waiting))))
    elif what == "record":
        h.record(j, (j.runtime_estimate or 30.0) * rnd.choice(factors))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=False), st.sampled_from([INF, 40.0]))
def test_the_merge_from_floors_is_the_plain_order_over_long_histories(
        rnd: random.Random, bound: float) -> None:
    # Long runs of records, so that typical values and weighed ranks (what
    # floors stand in for) are common; the queue is ordered before the plain
    # order fills the answers.
    h = RuntimeHistory()
    order = AdaptiveOrder()
    queue = queue_of(h, rnd.choice(["floors", "kept"]))
    waiting: dict[str, Job] = {}
    for n in range(80):
        random_event(rnd, n, h, queue, waiting, ["add", "add", "remove", "record", "record"],
                     [None, "ann", "bob"], [0.1, 1.0, 3.0])
        ctx = context(h, 150.0, bound, True)
        got = [w.id for w in queue.ordered(ctx)]
        assert got == [w.id for w in order.order(list(waiting.values()), ctx)]


def assert_kept_is_fresh(queue: AdaptiveQueue, h: RuntimeHistory) -> None:
    """Each group's kept rank is what a history with nothing cached answers:
    an exact rank where the queue holds one, else the floor ``floors`` gives
    (both at least 1.0, as a ratio takes them)."""
    kept = queue._kept
    assert kept is not None
    fresh = copy.deepcopy(h)
    fresh.answers.clear()
    fresh.floor_cache.clear()
    fresh.floor_readers.clear()
    assert sorted(kept.index.values()) == list(range(len(kept.sigs)))
    for sig, k in kept.index.items():
        group = kept.groups[k]
        assert group and kept.heads[k] == group[0][0]
        if kept.numbering == h.numbering:  # else numbered afresh at the next order
            # Read, not asked: asking may sweep the caches (numbering afresh).
            found = h.key_cache.get(group[0][2].id)
            assert found is None or kept.numbers[k] == found[1]
            assert kept.by_number[kept.numbers[k]] == sig
        if sig in kept.todo:
            continue  # asked at the next order
        head = group[0][2]
        if sig in kept.exact:
            rank = fresh.rank(head)
            if rank is None:
                assert kept.signs[k] == INF
            else:
                assert kept.signs[k] == -1.0 and kept.es[k] == max(rank, 1.0)
        else:
            (floor,), (is_exact,) = fresh.floors([head])
            assert not is_exact and floor is not None
            assert kept.signs[k] < -1.0 and kept.es[k] == kept.floor_es[k] == max(floor, 1.0)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=False), st.sampled_from([30, 80]), st.booleans())
def test_kept_ranks_are_fresh_ones_after_any_events(rnd: random.Random, steps: int,
                                                    sweep: bool) -> None:
    # Records that move typical values, the levels' order and the poor
    # levels, with the queue ordered (and so brought up to date) between.
    # ``sweep``: the history's caches swept (signatures numbered afresh)
    # every 16 jobs or so, and its list of dropped floors cut at one.
    with mock.patch.object(adaptive, "_SLACK", 1 if sweep else adaptive._SLACK):
        kept_ranks_after_events(rnd, steps)


def kept_ranks_after_events(rnd: random.Random, steps: int) -> None:
    h = RuntimeHistory()
    order = AdaptiveOrder()
    queue = queue_of(h, "kept")
    waiting: dict[str, Job] = {}
    for n in range(steps):
        random_event(rnd, n, h, queue, waiting,
                     ["add", "add", "remove", "record", "record", "record"],
                     [None, "ann", "bob", "cy"], [0.01, 0.1, 1.0, 3.0, 50.0])
        if rnd.random() < 0.7:
            # First at 40 s, before some heads' submit times (50 s, 99 s): a
            # head not yet submitted has no wait, and the queue must not
            # take its kept ratio as it does for the others.
            ctx = context(h, 40.0 if n < steps // 2 else 150.0, INF, True)
            got = queue.ordered(ctx)
            first = [next(got, None) for _ in range(rnd.randint(0, 3))]
            assert_kept_is_fresh(queue, h)
            plain = order.order(list(waiting.values()), ctx)
            assert [w for w in first if w is not None] == plain[:len(first)]


@pytest.mark.parametrize("seed", range(30))
def test_a_sweep_while_the_merge_is_read_leaves_its_order(seed: int) -> None:
    # A replay asks the history about each job it takes (``poolsim``'s
    # ``_begin``), and a job it has not seen may sweep the caches, which
    # numbers the signatures afresh halfway through the merge: a floor's
    # exact rank must then be the head's fresh one (``rank``), not that of
    # the signature its old number now names (or none at all).
    rnd = random.Random(seed)
    with mock.patch.object(adaptive, "_SLACK", 1):  # a sweep past 16 jobs
        h = RuntimeHistory()
        order = AdaptiveOrder()
        queue = queue_of(h, "kept")
        waiting: dict[str, Job] = {}
        for n in range(60):
            random_event(rnd, n, h, queue, waiting, ["add", "add", "remove", "record"],
                         [None, "ann", "bob", "cy"], [0.01, 0.1, 1.0, 3.0, 50.0])
            if rnd.random() < 0.3:
                ctx = context(h, 150.0, INF, True)
                got = queue.ordered(ctx)
                plain = [w.id for w in order.order(list(waiting.values()), ctx)]
                numbering = h.numbering
                taken = []
                for w in got:
                    taken.append(w.id)
                    for i in range(17):  # jobs never seen: at least one sweep
                        h.estimate(job(f"x{n}.{len(taken)}.{i}", {"cpu": P}))
                assert taken == plain
                assert h.numbering > numbering or not taken


def test_a_kept_rank_stands_until_a_record_and_a_floor_until_its_value_moves() -> None:
    h = RuntimeHistory()
    for k in range(8):  # every level has a typical value and an error
        h.record(job(f"d{k}", {"cpu": P}, user="ann", name="sim", runtime_estimate=100.0),
                 50.0)
    queue = queue_of(h, "kept")
    a = job("a", {"cpu": P}, user="ann", name="sim", submit_time=0.0, runtime_estimate=100.0)
    b = job("b", {"cpu": P}, user="bob", submit_time=0.0, runtime_estimate=100.0)
    queue.add(a)
    queue.add(b)
    kept = queue._kept
    assert kept is not None
    ctx = context(h, 150.0, INF, True)
    # bob's rank is the learned 50 s (his estimates were never scored);
    # ann's weighs it against her estimate of 100 s, a hair above.
    assert [j.id for j in queue.ordered(ctx)] == ["b", "a"]
    assert kept.exact == set(kept.sigs)  # both heads came to the top
    ka, kb = kept.index[h.signature(a)], kept.index[h.signature(b)]
    assert kept.es[kb] == h.rank(b) == 50.0
    assert kept.es[ka] == h.rank(a) and 50.0 < kept.es[ka] < 50.01
    floor = 50.0 - 1e-9 * 51.0  # the lesser of 50 and 100, a hair under
    assert kept.floor_es == [floor, floor]
    # A record drops every exact rank. bob's run adds a 50 s to the
    # windows his jobs and ann's read (size, global): their medians stay
    # 50 s, so both floors stand and the queue asks the history nothing.
    h.record(job("d9", {"cpu": P}, user="bob", runtime_estimate=100.0), 50.0)
    kept.update()
    assert kept.exact == set() and kept.todo == set()
    assert kept.es == [floor, floor] and kept.signs[ka] == kept.signs[kb] < -1.0
    assert_kept_is_fresh(queue, h)
    # bob's estimate now has the same error as ann's (50 s off 100 s): the
    # same rank, and submit order (then the id) puts ann's job first.
    assert [j.id for j in queue.ordered(ctx)] == ["a", "b"]
    assert h.rank(a) == h.rank(b) == kept.es[ka] == kept.es[kb]
