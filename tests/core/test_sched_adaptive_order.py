"""The fast paths of the ``adaptive`` strategy give what the plain rules give.

``RuntimeHistory`` answers from per-signature facts, a table of the levels
rebuilt once per ``record`` and a cached choice of level; ``AdaptiveOrder``
sorts one float per job instead of a tuple; ``FairShare`` stops weighing
shares once one queue is left. Each is held here, on generated histories and
queues, to a plain restatement of its rules (the code they replaced).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apportion.core.model import Node
from apportion.core.scheduling.adaptive import (
    _EXACT,
    _FLOOR_S,
    AdaptiveOrder,
    LearnSettings,
    RuntimeHistory,
    _Error,
    _keys,
)
from apportion.core.scheduling.adaptive_parts import _log_error, _typical
from apportion.core.scheduling.jobs import Job, Queue, job
from apportion.core.scheduling.policies import FairShare, OrderContext
from apportion.core.scheduling.state import ClusterState

P = 1000
INF = float("inf")


def plain_answer(h: RuntimeHistory, j: Job) -> tuple[float | None, float | None]:
    """(estimate, rank) as the rules say, read off the history's fields."""
    found = h._learned(j)
    given_est = j.runtime_estimate
    if found is None:
        return given_est, given_est
    level, learned = found
    err = h.errors.get(level)
    s = h.settings
    poor = err is not None and err.count >= s.min_runs[level] and err.mean > s.max_error
    if given_est is None:
        return learned, None if poor else learned
    if poor:
        return given_est, given_est
    user_err = h.errors.get(f"user:{j.user or ''}") or h.errors.get("user:")
    if user_err is None or err is None:
        least = min(learned, given_est)
        return least, least
    w_learned = 1.0 / max(err.mean, _EXACT) ** 2
    w_given = 1.0 / max(user_err.mean, _EXACT) ** 2
    mixed = math.exp((w_learned * math.log(learned + _FLOOR_S)
                      + w_given * math.log(given_est + _FLOOR_S))
                     / (w_learned + w_given)) - _FLOOR_S
    mixed = max(0.0, min(mixed, given_est))
    return mixed, mixed


jobs_drawn = st.builds(
    lambda i, user, name, queue, procs, est: job(
        f"j{i}", {"cpu": P * procs}, user=user, name=name, queue=queue, runtime_estimate=est),
    st.integers(0, 10**6),
    st.sampled_from([None, "ann", "bob", "cy"]),
    st.sampled_from([None, "sim", "fit"]),
    st.sampled_from(["default", "gpu"]),
    st.integers(1, 9),
    st.one_of(st.none(), st.sampled_from([0.0, 5.0, 60.0, 600.0, 3600.0, 1e5])),
)
factors = st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0, 1.0, 2.0, 30.0])
"""Run time over estimate: mostly near, so that levels are weighed (a
level far off is poor, and then the user's estimate stands alone)."""


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(jobs_drawn, factors), min_size=0, max_size=90),
       st.lists(jobs_drawn, min_size=1, max_size=12), st.integers(1, 6))
def test_answers_are_the_plain_rules_as_runs_come_in(
    history: list[tuple[Job, float]], asked: list[Job], every: int
) -> None:
    h = RuntimeHistory()
    asked = [job(f"q{k}", dict(j.total), user=j.user, name=j.name, queue=j.queue,
                 runtime_estimate=j.runtime_estimate) for k, j in enumerate(asked)]
    for n, (done, factor) in enumerate(history):
        h.record(done, (done.runtime_estimate or 900.0) * factor)
        if n % every == 0:  # answers cached between records must stay right
            assert h.ranks(asked) == [plain_answer(h, j)[1] for j in asked]
            for j in asked:
                assert (h.estimate(j), h.rank(j)) == plain_answer(h, j)
    assert h.ranks(asked) == [plain_answer(h, j)[1] for j in asked]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(jobs_drawn, factors | st.sampled_from([1e250, math.nan])),
                max_size=60))
def test_record_scores_each_level_as_the_running_mean_of_log_errors(
        history: list[tuple[Job, float]]) -> None:
    # ``record`` updates the levels' errors inline: each is ``_Error.add``
    # of ``_log_error`` against the typical value the level had, bit for bit
    # (NaN where the plain one is NaN), huge and NaN run times too.
    h = RuntimeHistory()
    plain: dict[str, _Error] = {}
    for done, factor in history:
        run = (done.runtime_estimate or 900.0) * factor
        for key in _keys(done):
            value = h.typical.get(key)
            if value is not None:
                plain.setdefault(key[0], _Error()).add(_log_error(value, run), 0.02)
        h.record(done, run)
        levels = {name: err for name, err in h.errors.items() if not name.startswith("user:")}
        assert levels.keys() == plain.keys()
        for name, err in plain.items():
            got = levels[name]
            assert got.count == err.count
            assert got.mean == err.mean or (got.mean != got.mean and err.mean != err.mean)


@given(st.lists(st.sampled_from([0.0, 1.0, 2.5, 7.0, 7.0, 30.0, 1e4]), min_size=1, max_size=80))
def test_the_kept_sorted_window_gives_the_median_of_the_window(runs: list[float]) -> None:
    h = RuntimeHistory()
    for k, run in enumerate(runs):
        h.record(job(f"j{k}", {"cpu": P}), run)
    window = deque(runs[-32:])
    assert h.runs[("global", None)] == window
    assert h.ordered_runs[("global", None)] == sorted(window)
    if len(window) >= 8:
        assert h.typical[("global", None)] == _typical(list(window))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(jobs_drawn, st.sampled_from([0.0, 1.0, 2.5, 7.0, 30.0, 1e4])),
                max_size=50),
       st.integers(1, 5), st.integers(1, 4))
def test_each_key_predicts_the_typical_value_of_its_window(
        history: list[tuple[Job, float]], depth: int, min_runs: int) -> None:
    # ``record`` keeps each key's window, sorted copy and typical value in
    # one pass (``_Window``): each is the plain one, for shallow and deep
    # windows and evidence rules either side of the depth.
    levels = ("user+name", "user", "name", "queue", "size", "global")
    s = LearnSettings(min_runs=dict.fromkeys(levels, min_runs),
                      depth={**dict.fromkeys(levels, depth), "global": 32})
    h = RuntimeHistory(s)
    seen: dict[tuple[str, object], list[float]] = {}
    for done, run in history:
        for key in _keys(done):
            seen.setdefault(key, []).append(run)
        h.record(done, run)
        for key, runs in seen.items():
            window = runs[-s.depth[key[0]]:]
            assert list(h.runs[key]) == window
            if len(window) > 2 or s.depth[key[0]] > 2:
                assert h.ordered_runs[key] == sorted(window)
            if len(window) >= min_runs:
                assert h.typical[key] == _typical(window)
            else:
                assert key not in h.typical


def plain_key(by: str, now: float, bound: float, rank: Callable[[Job], float | None]
              ) -> Callable[[Job], tuple[int, float, float, str]]:
    def key(j: Job) -> tuple[int, float, float, str]:
        wait = now - j.submit_time
        if wait >= bound:
            return (0, 0.0, j.submit_time, j.id)
        est = rank(j)
        if est is None:
            return (2, 0.0, j.submit_time, j.id)
        if by == "hrrn":
            e = est if est > 1.0 else 1.0
            return (1, -((wait if wait > 0.0 else 0.0) + e) / e, j.submit_time, j.id)
        return (1, est, j.submit_time, j.id)

    return key


ranks_drawn = st.one_of(st.none(), st.sampled_from(
    [0.0, -0.0, 0.5, 1.0, 1, 7, 10.0, 10.0, 99.5, 1e6, INF, math.nan, -5.0]))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0.0, 0.0, 3.0, 10.0, 50.0, 99.0, 100.0]),
                          ranks_drawn), min_size=0, max_size=30),
       st.sampled_from(["hrrn", "sjf"]), st.sampled_from([100.0, 150.0]),
       st.sampled_from([INF, 0.0, 50.0, 97.0]), st.booleans())
def test_the_order_is_the_plain_sort(
    drawn: list[tuple[float, float | None]], by: str, now: float, bound: float, batch: bool
) -> None:
    jobs = [job(f"j{k:02d}", {"cpu": P}, submit_time=t) for k, (t, _) in enumerate(drawn)]
    jobs.reverse()  # not in submit order: the order must not depend on it
    of = {f"j{k:02d}": r for k, (_, r) in enumerate(drawn)}
    asked: list[str] = []

    def rank(j: Job) -> float | None:
        asked.append(j.id)
        return of[j.id]

    def ranks(js: list[Job]) -> list[float | None]:
        return [rank(j) for j in js]

    ctx = OrderContext(now, {}, ClusterState([Node("n", {"cpu": P})]), lambda j: None, 0.0,
                       bound, rank, ranks if batch else None)
    got = [j.id for j in AdaptiveOrder(by).order(jobs, ctx)]
    assert got == [j.id for j in sorted(jobs, key=plain_key(by, now, bound, rank))]
    # Jobs past the bound are never ranked (ranking may learn a signature).
    aged = {j.id for j in jobs if now - j.submit_time >= bound}
    assert not aged & set(asked)


def plain_fair(jobs: list[Job], ctx: OrderContext) -> list[Job]:
    """``FairShare.order`` weighing shares to the last job."""
    cap = ctx.state.capacity_total()
    by_queue: dict[str, list[Job]] = {}
    for j in jobs:
        by_queue.setdefault(j.queue, []).append(j)
    heap: list[tuple[float, str]] = []
    pending: dict[str, deque[Job]] = {}
    used: dict[str, dict[str, int]] = {}
    for name, group in by_queue.items():
        group.sort(key=lambda j: (-j.priority, j.submit_time, j.id))
        pending[name] = deque(group)
        used[name] = dict(ctx.state.usage(name))
        heap.append((share(used[name], cap, ctx.queues.get(name)), name))
    out: list[Job] = []
    while heap:
        heap.sort()
        _, name = heap.pop(0)
        j = pending[name].popleft()
        out.append(j)
        for r, q in j.total.items():
            used[name][r] = used[name].get(r, 0) + q
        if pending[name]:
            heap.append((share(used[name], cap, ctx.queues.get(name)), name))
    return out


def share(used: dict[str, int], cap: dict[str, int], queue: Queue | None) -> float:
    dominant = max((q / cap[r] for r, q in used.items() if cap.get(r)), default=0.0)
    return dominant / (queue.weight if queue is not None and queue.weight > 0 else 1.0)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(1, 3),
                          st.integers(0, 2), st.sampled_from(["cpu", "gpu"])),
                min_size=0, max_size=20),
       st.sampled_from([0.5, 1.0, 3.0]))
def test_fair_share_is_the_plain_interleaving(
    drawn: list[tuple[str, int, int, str]], weight: float
) -> None:
    state = ClusterState([Node("n", {"cpu": 8 * P, "gpu": 4})])
    jobs = [job(f"j{k:02d}", {r: n if r == "gpu" else n * P}, queue=q, priority=prio,
                submit_time=float(k % 4))
            for k, (q, n, prio, r) in enumerate(drawn)]
    queues = {"a": Queue("a", weight=weight), "b": Queue("b")}
    ctx = OrderContext(0.0, queues, state, lambda j: None, 0.0)
    assert [j.id for j in FairShare().order(jobs, ctx)] == [j.id for j in plain_fair(jobs, ctx)]
