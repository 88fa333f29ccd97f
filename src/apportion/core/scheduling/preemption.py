"""The preemption planner: which running jobs to evict so a job can start.

Only preemptible jobs of strictly lower (base, un-aged) priority may be
victims; a victim is a whole job, every task of it, since a gang cut in half
is worth nothing. Among the sets that free enough, the planner picks the one
with the least cost, compared in this order: fewest victims, lowest highest
victim priority, lowest priority sum, least run time lost.

* A single-task job is planned node by node (as Kubernetes' preemption
  does): on each node, evict the cheapest victims there until the task fits;
  then keep the cheapest node's plan.
* A job with several tasks is planned on the whole cluster: evict victims
  cheapest first until the job fits, then give back (reprieve) every victim,
  dearest first, whose eviction turns out not to be needed.

The planner works on the state inside a transaction and rolls everything
back; the cycle then carries the plan out. It never plans when the job would
start from known running-job ends within ``grace`` seconds anyway.

The searches above ask cheap questions (``Placer.fits_on``: the node
filters), which may promise more than the devices give. So before a plan is
returned it is replayed as the cycle will carry it out: its victims evicted
in its order, on this very state, then ``Placer.place``, the code the cycle
places with (``_places``). A plan is made only when that places the job;
otherwise the next cheapest node's plan is tried, and none evicts nobody.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass

from apportion.core.scheduling.engine import Placer
from apportion.core.scheduling.jobs import Job, RunningJob
from apportion.core.scheduling.state import ClusterState


@dataclass(frozen=True, slots=True)
class PreemptionPlan:
    job_id: str
    victims: tuple[str, ...]
    cost: tuple[int, int, int, float]


def victim_key(rj: RunningJob, now: float) -> tuple[int, float, str]:
    """Cheapest victim first: lowest priority, then least run time lost."""
    return (rj.job.priority, (now - rj.start) * rj.job.task_count, rj.job.id)


def plan_cost(victims: Iterable[RunningJob], now: float) -> tuple[int, int, int, float]:
    vs = list(victims)
    return (
        len(vs),
        max((v.job.priority for v in vs), default=0),
        sum(v.job.priority for v in vs),
        sum((now - v.start) * v.job.task_count for v in vs),
    )


def eligible(state: ClusterState, job: Job,
             spared: Container[str] = ()) -> list[RunningJob]:
    """Running jobs ``job`` may evict: preemptible, of lower priority, and
    not in ``spared`` (the cycle spares the jobs it has just started, which
    would otherwise be the cheapest victims, having lost no run time: one
    result would both start and evict them)."""
    return [
        rj for rj in state.running.values()
        if rj.job.preemptible and rj.job.priority < job.priority and rj.job.id != job.id
        and rj.job.id not in spared
    ]


def plan(state: ClusterState, placer: Placer, job: Job, now: float,
         spared: Container[str] = ()) -> PreemptionPlan | None:
    """The cheapest set of victims that lets ``job`` start now, or None."""
    pool = eligible(state, job, spared)
    if not pool:
        return None
    pool.sort(key=lambda rj: victim_key(rj, now))
    if job.task_count == 1:
        plans = _per_node(state, placer, job, pool, now)
    else:
        one = _cluster_wide(state, placer, job, pool, now)
        plans = [one] if one is not None else []
    return next((p for p in plans if _places(state, placer, job, p)), None)


def _places(state: ClusterState, placer: Placer, job: Job, chosen: PreemptionPlan) -> bool:
    """Whether ``job`` is placed once ``chosen``'s victims are evicted, in
    its order: what the cycle then does, on the same state, by the same code."""
    mark = state.mark()
    try:
        for victim in chosen.victims:
            state.finish(victim)
        return placer.place(job).ok
    finally:
        state.rollback(mark)


def _fits(state: ClusterState, placer: Placer, job: Job) -> bool:
    mark = state.mark()
    try:
        return placer.place(job).ok
    finally:
        state.rollback(mark)


def _per_node(
    state: ClusterState, placer: Placer, job: Job, pool: Sequence[RunningJob], now: float
) -> list[PreemptionPlan]:
    """Each node's plan, cheapest first (on equal cost, in node order)."""
    by_node: dict[str, list[RunningJob]] = {}
    for rj in pool:
        for tp in rj.tasks:
            group = by_node.setdefault(tp.node, [])
            if not group or group[-1] is not rj:
                group.append(rj)
    plans: list[PreemptionPlan] = []
    for node in sorted(by_node):
        chosen = _victims_on(state, placer, job, node, by_node[node], now)
        if chosen is not None:
            plans.append(PreemptionPlan(job.id, tuple(v.job.id for v in chosen),
                                        plan_cost(chosen, now)))
    plans.sort(key=lambda p: p.cost)  # stable: node order on equal cost
    return plans


def _victims_on(
    state: ClusterState, placer: Placer, job: Job, node: str, victims: list[RunningJob],
    now: float,
) -> list[RunningJob] | None:
    """Cheapest victims on ``node`` after which the task fits there."""
    mark = state.mark()
    try:
        chosen: list[RunningJob] = []
        for rj in victims:
            state.finish(rj.job.id)
            chosen.append(rj)
            if placer.fits_on(job, node):
                return _reprieve(state, chosen, now,
                                 fits=lambda: placer.fits_on(job, node))
        return None
    finally:
        state.rollback(mark)


def _reprieve(
    state: ClusterState, chosen: list[RunningJob], now: float, fits: Callable[[], bool]
) -> list[RunningJob]:
    """Give back every victim, dearest first, whose eviction the job does not
    need after all (greedy cheapest-first can take one victim too many)."""
    kept = list(chosen)
    for rj in sorted(chosen, key=lambda v: victim_key(v, now), reverse=True):
        state.start(rj.job, rj.tasks, rj.start, rj.estimate)
        if fits():
            kept.remove(rj)
        else:
            state.finish(rj.job.id)
    return kept


def _cluster_wide(
    state: ClusterState, placer: Placer, job: Job, pool: Sequence[RunningJob], now: float
) -> PreemptionPlan | None:
    mark = state.mark()
    try:
        chosen: list[RunningJob] = []
        for rj in pool:
            state.finish(rj.job.id)
            chosen.append(rj)
            if all(state.free_total_of(r) >= q for r, q in job.total.items()) and _fits(
                state, placer, job
            ):
                break
        else:
            return None
        chosen = _reprieve(state, chosen, now, fits=lambda: _fits(state, placer, job))
        return PreemptionPlan(job.id, tuple(v.job.id for v in chosen), plan_cost(chosen, now))
    finally:
        state.rollback(mark)
