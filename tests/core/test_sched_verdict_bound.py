"""Class verdicts in a state kept for many cycles stay bounded
(``filters.bound_verdicts``): a queue that meets thousands of job shapes one
after another (each submitted, decided and gone) keeps about ``_SPARE`` of
them, and the cycles after a sweep decide as on a state built afresh."""

from __future__ import annotations

from apportion.core.model import Node
from apportion.core.scheduling import ClusterState, SchedulerConfig, job, schedule_cycle
from apportion.core.scheduling.filters import _SPARE, Verdict, bound_verdicts, class_verdict
from apportion.core.scheduling.jobs import Job

MIB = 1 << 20
NODES = [Node(f"n{i}", {"cpu": 1000, "memory": 1 << 30}) for i in range(8)]
CONFIG = SchedulerConfig(strategy="fifo", backfill="easy")


def verdicts(state: ClusterState) -> int:
    return sum(1 for v in state.cache.values()
               if type(v) is tuple and len(v) == 2 and isinstance(v[1], Verdict))


def shaped(k: int, count: int = 1) -> Job:
    """A job of its own shape: ``k`` MiB more memory than the last."""
    return job(f"j{k}", {"cpu": 500, "memory": MIB + k}, count=count, submit_time=float(k),
               runtime_estimate=60.0)


def decisions(state: ClusterState, pending: list[Job], now: float) -> tuple[object, ...]:
    r = schedule_cycle(state, pending, now, CONFIG)
    return ([(p.job_id, p.tasks) for p in r.placements], list(r.reservations),
            list(r.preemptions), list(r.unplaced.items()))


def test_many_shapes_one_by_one_keep_a_bounded_cache_and_the_same_decisions() -> None:
    state = ClusterState(NODES)
    # Four jobs stay running, so later cycles have a head to plan past them.
    for k in range(3000):
        j = shaped(k)
        schedule_cycle(state, [j], float(k), CONFIG)
        if k % 1000 != 7:
            state.finish(j.id)
        assert len(state.cache) <= 2 + _SPARE + 2 * 1 + 4
    assert 0 < verdicts(state) <= 2 * 1 + _SPARE
    # A queue of old shapes (dropped), new ones (kept) and gangs that wait.
    pending = [shaped(k, count=1 + k % 3) for k in (3, 2990, 1500, 2999, 10, 2500)] \
        + [shaped(k, count=8) for k in (4000, 4001)]
    fresh = ClusterState(NODES, list(state.running.values()))
    for now in (3000.0, 3100.0):
        assert decisions(state, pending, now) == decisions(fresh, pending, now)
        pending = [j for j in pending if j.id not in state.running]


def test_a_sweep_keeps_the_pending_shapes_and_other_entries() -> None:
    state = ClusterState(NODES)
    for k in range(3 * _SPARE):
        class_verdict(state, shaped(k), 0)
    state.cache["other"] = ("kept", 1)
    waiting = [shaped(5), shaped(2 * _SPARE)]
    before = {k: state.cache[k] for k in ((j.shape_hash, 0) for j in waiting)}
    bound_verdicts(state, waiting)
    assert all(state.cache[k] is v for k, v in before.items())
    assert state.cache["other"] == ("kept", 1)
    assert verdicts(state) == 2
    # Kept: the next sweep waits for another ``_SPARE`` entries or so.
    for k in range(3 * _SPARE, 4 * _SPARE):
        class_verdict(state, shaped(k), 0)
    bound_verdicts(state, waiting)
    assert verdicts(state) == 2 + _SPARE
    for k in range(9 * _SPARE, 9 * _SPARE + 5):  # 2 * 3 + _SPARE entries passed: swept
        class_verdict(state, shaped(k), 0)
    bound_verdicts(state, waiting)
    assert verdicts(state) == 2
