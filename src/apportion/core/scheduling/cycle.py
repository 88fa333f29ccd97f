"""One scheduling cycle: the entry point the server and the simulator call.

``schedule_cycle(state, pending, now, config)`` orders the pending jobs with
the strategy's queue policy and goes down the list:

* a job whose queue is unknown, or whose quota has no room, is held (and
  never becomes the head: it does not wait for nodes);
* a job that fits starts: its grants are made on ``state`` and it is
  registered as running;
* a job that does not fit may preempt (lower-priority, preemptible jobs),
  unless known running-job ends would let it start within the grace time;
* otherwise backfilling decides what may pass it: ``none`` lets nothing
  pass, ``easy`` reserves for this first blocked job only, ``conservative``
  reserves for every blocked job.

The cycle updates ``state`` with its decisions (as the ledger does with a
grant) and returns them; a caller whose durable write fails undoes a start
with ``state.finish(job_id)``. Time comes in as ``now``; nothing here reads a
clock, does I/O or draws random numbers, so a replay is exact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

from apportion.core.reasons import Code, Failure, Kind, Reason
from apportion.core.scheduling import preemption
from apportion.core.scheduling.adaptive import RuntimeHistory
from apportion.core.scheduling.backfill import (
    HeadReservation,
    JobReservation,
    cached_easy_reservation,
    easy_reservation,
    limits_in_play,
    use_extra,
)
from apportion.core.scheduling.cycleconfig import (
    BACKFILL_MODES,
    INF,
    CycleResult,
    DeadlineRisk,
    Placement,
    Preemption,
    SchedulerConfig,
    deadline_risks,
    estimator,
    given_estimate,
)
from apportion.core.scheduling.engine import Placer
from apportion.core.scheduling.fastindex import maker
from apportion.core.scheduling.filters import bound_verdicts, class_verdict, partner_missing
from apportion.core.scheduling.freeprofile import Profile, running_ends
from apportion.core.scheduling.jobs import Job, Queue, RunningJob, TaskPlacement
from apportion.core.scheduling.policies import OrderContext, Strategy, strategy
from apportion.core.scheduling.shapekeys import ShapeAnswers, ShapeKeys
from apportion.core.scheduling.state import ClusterState
from apportion.core.scheduling.status import (
    BACKFILL,
    CYCLE,
    QUOTA,
    not_enough_free,
    over_quota,
)

__all__ = [  # the config and result types are re-exported: they lived here
    "BACKFILL_MODES", "CycleResult", "DeadlineRisk", "Placement", "Preemption",
    "SchedulerConfig", "estimator", "pending_ends", "schedule_cycle",
]
_Unset = Enum("_Unset", "UNSET")  # ``_start``'s estimate not given by its caller
_UNSET = _Unset.UNSET
pending_ends = running_ends  # for callers planning their next cycle time


@dataclass(slots=True)
class _Pass:
    """Mutable bookkeeping of one cycle."""

    state: ClusterState
    now: float
    config: SchedulerConfig
    queues: Mapping[str, Queue]
    placer: Placer
    estimate: Callable[[Job], float | None]
    placements: list[Placement] = field(default_factory=list)
    reservations: list[JobReservation] = field(default_factory=list)
    preemptions: list[Preemption] = field(default_factory=list)
    unplaced: dict[str, Failure] = field(default_factory=dict)
    failed: dict[object, Failure] = field(default_factory=dict)
    failed_shapes: dict[tuple[object, int], tuple[object, Failure]] = field(default_factory=dict)
    """``_try``'s failures under (walk, shape hash), with the shape: two
    shapes may share a hash, and one must not answer for the other."""
    head: HeadReservation | None = None
    head_job: Job | None = None
    blocked: bool = False
    no_backfill: Failure | None = None
    profile: Profile | None = None
    preempt_tries: int = 0
    reserved: int = 0
    lowest_victim: int | None = None


def schedule_cycle(
    state: ClusterState,
    pending: Sequence[Job],
    now: float,
    config: SchedulerConfig,
    *,
    queues: Mapping[str, Queue] | None = None,
    history: RuntimeHistory | None = None,
) -> CycleResult:
    """Decide which pending jobs start now, what the rest wait for, and
    which jobs are preempted; ``state`` is updated with the decisions."""
    bound_verdicts(state, pending)  # a state kept for many cycles meets many shapes
    strat = strategy(config.strategy)
    estimate = estimator(strat, history, config.default_estimate)
    rank = ranks = None
    if strat.learns and history is not None:
        history.correct(state, now)  # before anything is planned on the old ends
        rank, ranks = history.rank, history.ranks
    queues = queues or {}
    if len(pending) == 1:
        # Most cycles of a replay that keeps up with arrivals: one job, and
        # it starts now. Decided without the pass's set-up where it does.
        alone = _alone(state, pending[0], now, config, queues, strat, estimate)
        if alone is not None:
            return alone
    # Without backfilling an aged head blocks everything behind it, and on
    # KTH a 3-day bound drained the machine (docs/scheduling.md, Adaptive).
    # The response ratio alone still grows without bound, so nobody waits for
    # ever; the bound is for backfilling, where later jobs pass the head.
    bound = config.aging_bound_s if config.backfill != "none" else INF
    if len(pending) == 1:
        # An order is a permutation of the queue: one job has one (and on a
        # replay that keeps up with arrivals, most cycles see one job).
        ordered = list(pending)
    else:
        ctx = OrderContext(now, queues, state, estimate, config.aging_rate, bound, rank, ranks)
        ordered = strat.order.order(pending, ctx)
    p = _Pass(state, now, config, queues, Placer(state, strat.options), estimate)
    p.lowest_victim = state.lowest_preemptible_priority() if config.preemption else None
    # Only a cycle limit, a queue with a quota (or an unknown one, when
    # queues must be known) can stop a job before it is looked at.
    gated = (config.max_placements is not None or config.queue_required
             or any(q.quota for q in queues.values()))
    conservative = config.backfill == "conservative"
    jobs = iter(ordered)
    for job in jobs:
        if gated and _gate(p, job):
            continue
        if conservative:
            _conservative(p, job)
        elif p.no_backfill is not None:
            # Nothing passes the head without backfilling: no need to look.
            p.unplaced[job.id] = p.no_backfill
        else:
            _in_order(p, job)
            if p.blocked:
                break
    _behind_head(p, jobs, gated)  # what is left once a head blocks (EASY, none)
    if p.head is None and p.head_job is not None and p.no_backfill is None:
        _head(p)  # report the head's reservation even when nothing backfilled
    return CycleResult(
        tuple(p.placements),
        tuple(p.reservations),
        tuple(p.preemptions),
        p.unplaced,
        deadline_risks(ordered, p.reservations, p.placements, p.now, p.estimate),
    )


def _alone(
    state: ClusterState,
    job: Job,
    now: float,
    config: SchedulerConfig,
    queues: Mapping[str, Queue],
    strat: Strategy,
    estimate: Callable[[Job], float | None],
) -> CycleResult | None:
    """The cycle of a lone pending job that the pass would start at once:
    nothing to order, hold or plan, so the same placement (``_in_order``:
    the summed-free check, then ``Placer.place``) and the same result,
    without the pass. None, with the state as it was, for every other case
    (the pass decides those): a reservation mode that plans even a lone job,
    a deadline, a cycle limit, a queue that may hold it, or no room now.
    ``tests/core/test_cycle_alone.py`` holds it to the pass."""
    cap = config.max_placements
    if (config.backfill == "conservative" or job.deadline is not None
            or (cap is not None and cap < 1)):
        return None
    queue = queues.get(job.queue)
    if (queue is not None and queue.quota) or (config.queue_required and queue is None):
        return None
    free = state.free_totals
    for r, q in job.total.items():
        if free.get(r, 0) < q:
            return None
    # A failed placement changes nothing (one task is granted whole or not,
    # a gang rolls back), so the pass may try it again.
    tasks = Placer(state, strat.options).place(job).tasks
    if tasks is None:
        return None
    est = estimate(job)
    state.add_running(_new_running(job, now, tasks, est))
    return CycleResult((_new_placement(job.id, tasks, now, est, False, ()),), (), (), {}, ())


def _busy(stage: str, message: str) -> Failure:
    """A wait the cycle itself imposes (its limit, backfill's order): one
    busy reason, named for the stage that gives it."""
    return Failure.of(Reason(stage, Code.INSUFFICIENT, Kind.BUSY, message))


PAST = "past"
"""Where a failure remembered for a shape was met: past the planned head."""

_CYCLE_LIMIT = _busy(CYCLE, "cycle placement limit reached")
_new_running, _new_placement = maker(RunningJob), maker(Placement)  # compiled: two a start


def _gate(p: _Pass, job: Job) -> bool:
    """Whether the cycle limit or the job's queue stops ``job`` before it is
    looked at (then why is recorded)."""
    cap = p.config.max_placements
    if cap is not None and len(p.placements) >= cap:
        p.unplaced[job.id] = _CYCLE_LIMIT
        return True
    queue = p.queues.get(job.queue)
    if (queue is not None and queue.quota) or (p.config.queue_required and queue is None):
        held = _held(p, job)
        if held is not None:
            p.unplaced[job.id] = held
            return True
    return False


def _behind_head(p: _Pass, jobs: Iterable[Job], gated: bool) -> None:
    """The jobs behind a blocked head (EASY or no backfilling).

    Some 9,000 of them a cycle on a full cluster (``bench_scheduler.py``),
    nearly all meeting the failure remembered for their shape past the head.
    Until the head's reservation is planned every job goes to ``_backfill``
    (the first that the summed free capacity holds plans it); then, without
    a cycle limit or quotas, ``_by_shape`` answers the rest, and else (or
    on a pool of interchangeable capacity) ``_one_by_one``.
    """
    rest: Iterator[Job] = iter(jobs)
    if not gated:
        for job in rest:
            _backfill(p, job)
            if p.head is not None or p.no_backfill is not None:
                break
        if p.no_backfill is not None:
            # Nothing passes the head: every job is told so, as ``_backfill``
            # tells each.
            p.unplaced.update(dict.fromkeys([job.id for job in rest], p.no_backfill))
            return
        if p.head is not None and p.head.pool is None:
            _by_shape(p, list(rest))
            return
    _one_by_one(p, rest, gated)


def _one_by_one(p: _Pass, jobs: Iterable[Job], gated: bool) -> None:
    """``_backfill`` for each of ``jobs``, except that a job meeting the
    failure remembered for its shape past the head is answered here, after
    the same checks ``_backfill`` makes first (the summed free capacity
    covers the job, it is not expected to end before the reservation)."""
    unplaced = p.unplaced
    free = p.state.free_totals
    shapes = p.failed_shapes
    estimate = p.estimate
    for job in jobs:
        if gated and _gate(p, job):
            continue
        head = p.head
        if p.no_backfill is not None or head is None or head.pool is not None:
            _backfill(p, job)
            continue
        hit = shapes.get((PAST, job.shape_hash)) if job.cacheable else None
        if hit is None or (hit[0] is not job.shape and hit[0] != job.shape):
            _backfill(p, job)
            continue
        for r, q in job.total.items():
            if free.get(r, 0) < q:
                break
        else:
            est = estimate(job)
            if est is None or p.now + est > head.reservation.start:
                unplaced[job.id] = hit[1]
                continue
        _backfill(p, job)


def _by_shape(p: _Pass, jobs: list[Job]) -> None:
    """``_one_by_one``'s answers to ``jobs`` behind a planned head (not on a
    pool), with its checks made per shape instead of per job: whether the
    shape has a failure remembered past the head, and whether the summed
    free capacity holds it (``shapekeys.ShapeAnswers``). Only the expected end is
    read per job."""
    head = p.head
    assert head is not None
    start = head.reservation.start
    now = p.now
    unplaced = p.unplaced
    estimate = p.estimate
    placements = p.placements
    answers = ShapeAnswers(ShapeKeys.of(p.state, len(jobs)), p.failed_shapes,
                           p.state.free_totals, PAST)
    # ``answers.answer(job)`` inlined for a job met before: the call cost
    # ~8 M instructions a cycle (callgrind, bench/README.md's h27-cycle).
    known = answers.known
    by_key = answers.by_key
    given = estimate is given_estimate  # then read inline: ~8,600 calls a cycle
    for job in jobs:
        hit = known(job.id)
        failure = by_key[hit[1]] if hit is not None and hit[0] is job else answers.answer(job)
        if failure is not None:
            est = job.runtime_estimate if given else estimate(job)
            if est is None or now + est > start:
                unplaced[job.id] = failure
                continue
        started = len(placements)
        _backfill(p, job)
        # ``_backfill`` replaces the head only on a pool (``_exact_head``)
        # and sets ``no_backfill`` only while no head is planned.
        assert p.head is head and p.no_backfill is None
        answers.after(job, started != len(placements))


def _held(p: _Pass, job: Job) -> Failure | None:
    queue = p.queues.get(job.queue)
    if queue is None:
        if p.config.queue_required:
            return Failure.of(Reason(QUOTA, Code.QUEUE, Kind.NEVER, f"unknown queue {job.queue}"))
        return None
    if not queue.quota:
        return None
    used = p.state.usage(job.queue)
    for r, q in job.total.items():
        limit = queue.quota.get(r)
        if limit is not None and used.get(r, 0) + q > limit:
            return Failure.of(over_quota(queue.name, r, used.get(r, 0), limit, q))
    return None


def _try(
    p: _Pass,
    job: Job,
    limits: Mapping[str, Mapping[str, int]] | None = None,
    cache_key: object = None,
    prefer: Sequence[str] = (),
) -> tuple[TaskPlacement, ...] | Failure:
    """Place ``job`` now, remembering failures by job shape: within a cycle
    capacity only shrinks (until a preemption frees some), so a shape that
    did not fit will not fit later in the same cycle."""
    # ``_known`` inline: a call less a placement.
    hit = p.failed_shapes.get((cache_key, job.shape_hash)) if job.cacheable else None
    if hit is not None and (hit[0] is job.shape or hit[0] == job.shape):
        return hit[1]
    out = p.placer.attempt(job, limits, prefer)
    if isinstance(out, Failure) and job.cacheable:
        p.failed_shapes[(cache_key, job.shape_hash)] = (job.shape, out)
    return out


def _known(p: _Pass, job: Job, cache_key: object) -> Failure | None:
    """The failure ``_try`` remembered for ``job``'s shape and ``cache_key``
    (``_try`` repeats this body inline: keep the two in step)."""
    hit = p.failed_shapes.get((cache_key, job.shape_hash)) if job.cacheable else None
    if hit is not None and (hit[0] is job.shape or hit[0] == job.shape):
        return hit[1]
    return None


def _start(p: _Pass, job: Job, tasks: tuple[TaskPlacement, ...], backfilled: bool,
           victims: tuple[str, ...] = (), est: float | _Unset | None = _UNSET) -> None:
    if est is _UNSET:  # not given by the caller (it is the same all cycle)
        # ``given_estimate`` inline (a call less a placement): keep in step.
        est = job.runtime_estimate if p.estimate is given_estimate else p.estimate(job)
    p.state.add_running(_new_running(job, p.now, tasks, est))
    p.placements.append(_new_placement(job.id, tasks, p.now, est, backfilled, victims))


def _in_order(p: _Pass, job: Job) -> None:
    # The summed-free check first: a blocked head meets it on every pass. It
    # says "not now", so it stands only for jobs some node could ever take.
    short = _aggregate(p, job)
    if short is not None and all(
        class_verdict(p.state, job, i).aligned for i in range(len(job.tasks))
    ):
        outcome: tuple[TaskPlacement, ...] | Failure = short
    else:
        outcome = _try(p, job)
    if not isinstance(outcome, Failure):
        _start(p, job, outcome, False)
        return
    if outcome.kind is not Kind.BUSY:
        # It is not waiting for capacity (no node could ever take it, or only
        # nodes that are down): it must not hold the queue up.
        p.unplaced[job.id] = outcome
        return
    waiting = None if job.cacheable else partner_missing(job, p.state)
    if waiting is not None:
        # It waits for a job it must run beside to start, as for a
        # dependency: holding the queue would keep that job from ever
        # starting if it queues behind this one.
        p.unplaced[job.id] = Failure.of(waiting)
        return
    if _preempt(p, job):
        return
    p.unplaced[job.id] = outcome
    p.blocked = True
    p.head_job = job
    if p.config.backfill == "none":
        p.no_backfill = _busy(BACKFILL, f"waiting behind {job.id} (no backfilling)")


def _head(p: _Pass) -> HeadReservation | None:
    """The head job's reservation, computed on first need: most passes have
    no job that could backfill, and then it is never needed."""
    if p.head is None and p.no_backfill is None:
        assert p.head_job is not None
        p.head = cached_easy_reservation(p.state, p.placer, p.head_job, p.now)
        if p.head is None:
            p.no_backfill = _busy(
                BACKFILL,
                f"waiting behind {p.head_job.id}, whose start cannot be planned "
                "(running jobs without run time estimates)",
            )
        else:
            p.reservations.append(p.head.reservation)
    return p.head


def _backfill(p: _Pass, job: Job) -> None:
    if p.no_backfill is not None:
        p.unplaced[job.id] = p.no_backfill
        return
    # Most of a long queue stops here at the failure remembered for its
    # shape: ``_aggregate``'s check and the head are read inline for them.
    free = p.state.free_totals
    for r, q in job.total.items():
        if free.get(r, 0) < q:  # cannot fit now, whatever the reservation says
            short = _aggregate(p, job)
            assert short is not None  # the same check, short on ``r``
            p.unplaced[job.id] = short
            return
    head = p.head if p.head is not None else _head(p)
    if head is None:
        assert p.no_backfill is not None
        p.unplaced[job.id] = p.no_backfill
        return
    est = p.estimate(job)
    # A job expected to end by the reservation cannot delay it, wherever it
    # runs; one that runs past it may use only what the head leaves free.
    if est is not None and p.now + est <= head.reservation.start:
        # It leaves before the head starts: put it on the head's nodes first,
        # keeping the others for jobs that will run past the reservation.
        outcome = _try(p, job, prefer=tuple(head.extra))
    elif head.pool is not None and head.pool.covers(job):
        need = job.total[head.pool.resource]
        if need > head.pool_extra:
            p.unplaced[job.id] = _past_head(head)
            return
        outcome = _try(p, job)
        if not isinstance(outcome, Failure):
            head.pool_extra -= need
    else:
        if head.pool is not None:
            # This job could fragment the pool: plan the head node by node.
            head = _exact_head(p, head)
        # ``_try`` reads a known failure first (rare: ``_by_shape`` answers those).
        outcome = _try(p, job, limits_in_play(p.state, job, head.extra), PAST)
    if isinstance(outcome, Failure):
        p.unplaced[job.id] = outcome
        return
    use_extra(head.extra, outcome)
    _start(p, job, outcome, True, (), est)


def _aggregate(p: _Pass, job: Job) -> Failure | None:
    """The summed-free check, with one shared answer per short resource: it
    runs for every queued job on every pass, so it must cost next to nothing."""
    free = p.state.free_totals
    for r, q in job.total.items():
        if free.get(r, 0) < q:
            key = ("agg", r)
            hit = p.failed.get(key)
            if hit is None:
                hit = p.failed[key] = Failure.of(not_enough_free(r, free.get(r, 0)))
            return hit
    return None


def _past_head(head: HeadReservation) -> Failure:
    return _busy(BACKFILL,
                 f"would delay {head.reservation.job_id}, reserved to start at "
                   f"{head.reservation.start:.0f}")


def _exact_head(p: _Pass, head: HeadReservation) -> HeadReservation:
    assert p.head_job is not None
    exact = easy_reservation(p.state, p.placer, p.head_job, p.now)
    if exact is None:
        return head
    # Capacity the pool arithmetic already promised to backfilled jobs is in
    # use by them now, so the per-node shadow accounts for it.
    p.head = exact
    return exact


def _conservative(p: _Pass, job: Job) -> None:
    if p.profile is None:
        p.profile = Profile.of(p.state, p.now)
    profile = p.profile
    need = profile.vector(job.total)
    est = p.estimate(job)
    if need is None:
        p.unplaced[job.id] = Failure.of(Reason(BACKFILL, Code.UNKNOWN_RESOURCE, Kind.NEVER,
                                               "asks for a resource no ready node offers"))
        return
    depth = p.config.reservation_depth
    deep = depth is not None and p.reserved >= depth
    # Past the reservation depth a job may still start now if the plan has
    # room at once, but it gets no reservation of its own.
    t = profile.earliest(need, est, first_only=deep)
    if t is not None and t <= p.now:
        outcome = _try(p, job)
        if not isinstance(outcome, Failure):
            profile.reserve(p.now, need, est)
            _start(p, job, outcome, p.blocked, (), est)
            return
        if outcome.kind is not Kind.BUSY:
            p.unplaced[job.id] = outcome
            return
        if not p.blocked and _preempt(p, job):
            p.profile = None
            return
        # The sums said yes but the nodes say no (fragmentation): plan later.
        t = None if deep else profile.earliest(need, est, later_than=p.now)
        p.unplaced[job.id] = outcome
    else:
        if not p.blocked and _preempt(p, job):
            p.profile = None
            return
        p.unplaced[job.id] = _DEEP if deep else _waiting(t)
    p.blocked = True
    if t is not None and not deep:
        profile.reserve(t, need, est)
        p.reservations.append(JobReservation(job.id, t, {}))
        p.reserved += 1


_DEEP = _busy(BACKFILL,
              "waiting beyond the reservation depth; no room now")


def _waiting(t: float | None) -> Failure:
    if t is None:
        return _busy(BACKFILL,
                     "waiting; its start cannot be planned from known run times")
    return _busy(BACKFILL, f"reserved to start at {t:.0f}")


def _preempt(p: _Pass, job: Job) -> bool:
    if (
        p.lowest_victim is None
        or p.lowest_victim >= job.priority
        or p.preempt_tries >= p.config.max_preemption_attempts
    ):
        return False
    p.preempt_tries += 1
    # Never evict when a known end would let the job start about as soon.
    soon = easy_reservation(p.state, p.placer, job, p.now)
    if soon is not None and soon.reservation.start <= p.now + p.config.preemption_grace_s:
        return False
    started = {placement.job_id for placement in p.placements}
    chosen = preemption.plan(p.state, p.placer, job, p.now, started)
    if chosen is None:
        return False
    evicted = [p.state.finish(victim) for victim in chosen.victims]
    result = p.placer.place(job)
    if result.tasks is None:
        for rj in reversed(evicted):  # (plan placed it: a bug) evict no one for nothing
            p.state.start(rj.job, rj.tasks, rj.start, rj.estimate)
        return False
    for rj in evicted:
        nodes = tuple(sorted({tp.node for tp in rj.tasks}))
        p.preemptions.append(Preemption(rj.job.id, job.id, nodes))
    # Capacity came back: failures remembered so far no longer hold.
    p.failed.clear()
    p.failed_shapes.clear()
    _start(p, job, result.tasks, False, chosen.victims)
    p.lowest_victim = p.state.lowest_preemptible_priority()
    return True
