"""Reservations for jobs that must wait, so backfilled jobs cannot delay them.

EASY (Lifka 1995; Mu'alem & Feitelson 2001) keeps one reservation, for the
job at the head of the queue; conservative backfilling keeps one for every
waiting job. A running job is expected to end at ``max(now, start +
estimate)``.

* ``easy_reservation`` is exact, per node. On the state itself, inside a
  transaction that is rolled back, it releases running jobs in order of
  expected end until the head job fits (placed by the same placement code,
  filling first the nodes those jobs free, as count-based EASY implicitly
  does, so that idle nodes stay free for backfill). The reservation records
  the time and, per node, what stays free at that time after the head takes
  its share (``extra``). A later job may start now if it is expected to end
  by the reservation, or if on reserved nodes it uses no more than ``extra``:
  the rule that lets a job run past the reservation on nodes the head job
  does not need.
* ``freeprofile.Profile`` is the plan conservative backfilling keeps
  (free capacity summed over ready nodes, as a step function of time).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sortedcontainers import SortedList

from apportion.core.scheduling.capacity import NodeRec
from apportion.core.scheduling.constraints import family
from apportion.core.scheduling.devices import tasks_held
from apportion.core.scheduling.engine import Placer
from apportion.core.scheduling.filters import Verdict, class_verdict
from apportion.core.scheduling.framework import fit_count
from apportion.core.scheduling.freeprofile import INF
from apportion.core.scheduling.freeprofile import Profile as Profile  # it lived here
from apportion.core.scheduling.freeprofile import running_ends as running_ends
from apportion.core.scheduling.freeprofile import split_step as split_step
from apportion.core.scheduling.jobs import Job, TaskPlacement
from apportion.core.scheduling.state import ClusterState


@dataclass(frozen=True, slots=True)
class JobReservation:
    """When a waiting job is expected to start, and on which nodes (empty for
    reservations made on the aggregate profile). Not the guard's
    ``Reservation``, which holds resources of the local host now."""

    job_id: str
    start: float
    nodes: Mapping[str, Mapping[str, int]]


@dataclass(slots=True)
class HeadReservation:
    reservation: JobReservation
    extra: dict[str, dict[str, int]]
    """Per reserved node, what stays free at the reservation time after the
    head job takes its share: the most a job running past it may use there."""
    pool: Pool | None = None
    """Set when the reservation was made on a pool of interchangeable capacity
    (then ``extra`` is empty and ``pool_extra`` says what is left)."""
    pool_extra: int = 0


@dataclass(frozen=True, slots=True)
class Pool:
    """Capacity that is interchangeable in units: one class of nodes with a
    single resource, every node's free amount and every running task a
    multiple of ``unit`` (the head's task size). A trace replay's processors
    are the example. Then "the head fits" and "what it leaves" are sums, and
    a job whose tasks are multiples of ``unit`` can be checked against the
    sum without a per-node shadow."""

    resource: str
    unit: int

    def covers(self, job: Job) -> bool:
        return all(
            len(s.resources) == 1 and s.resources.get(self.resource, 0) % self.unit == 0
            and self.resource in s.resources
            for s in job.tasks
        )


def pool_for(state: ClusterState, job: Job) -> Pool | None:
    """The pool ``job`` can be planned on, or None when capacity is not
    interchangeable for it (then the per-node shadow is used)."""
    classes = [c for c in state.classes if c.size and c.schedulable]
    if len(classes) != 1:
        return None
    cls = classes[0]
    if len(cls.resources) != 1 or cls.devices:
        return None
    r = cls.resources[0]
    sizes = {s.resources.get(r, 0) for s in job.tasks}
    if len(sizes) != 1 or any(len(s.resources) != 1 for s in job.tasks):
        return None
    unit = sizes.pop()
    if unit <= 0 or cls.capacity[0] % unit:
        return None
    if job.constraints or job.affinity or job.anti_affinity:
        return None
    if any(b.free[0] % unit for b in state.buckets()):
        return None
    for rj in state.running.values():
        if any(spec.resources.get(r, 0) % unit for spec in rj.job.tasks):
            return None
    return Pool(r, unit)


def pool_reservation(
    state: ClusterState, pool: Pool, job: Job, now: float
) -> HeadReservation | None:
    """EASY's reservation on a pool: the first expected end after which the
    summed free units cover the head job."""
    r = pool.resource
    need = job.total.get(r, 0)
    free = state.free_total_of(r)
    ends = running_ends(state, now)
    i = 0
    t = now
    while free < need:
        if i >= len(ends):
            return None
        t = ends[i][0]
        while i < len(ends) and ends[i][0] == t:
            free += state.running[ends[i][1]].job.total.get(r, 0)
            i += 1
    return HeadReservation(JobReservation(job.id, t, {}), {}, pool, free - need)


def cached_easy_reservation(
    state: ClusterState, placer: Placer, job: Job, now: float
) -> HeadReservation | None:
    """``easy_reservation``, reused while nothing has started or ended and no
    running job has outrun its estimate (so every expected end is the same)."""
    hit = state.cache.get("easy")
    if (
        hit is not None
        and hit[0] == job.id
        and hit[1] is placer.options
        and hit[2] == state.changes
        and now <= hit[3]
    ):
        found: HeadReservation | None = hit[4]
        return None if found is None else _copy(found)
    # A job past its estimate is expected to end "now", which moves with the
    # clock: then the answer holds for this instant only.
    valid_until = state.ends[0][0] if state.ends else INF
    valid_until = max(valid_until, now)
    pool = pool_for(state, job)
    if pool is not None:
        found = pool_reservation(state, pool, job, now)
    else:
        found = easy_reservation(state, placer, job, now)
    state.cache["easy"] = (job.id, placer.options, state.changes, valid_until, found)
    return None if found is None else _copy(found)


def _copy(found: HeadReservation) -> HeadReservation:
    # The cycle spends ``extra`` as it backfills; the cached one stays whole.
    return HeadReservation(found.reservation, {n: dict(v) for n, v in found.extra.items()},
                           found.pool, found.pool_extra)


def easy_reservation(
    state: ClusterState,
    placer: Placer,
    job: Job,
    now: float,
    ends: Sequence[tuple[float, str]] | None = None,
) -> HeadReservation | None:
    """The earliest time ``job`` fits as running jobs end, with the nodes it
    would take; None when it does not fit even after every known end."""
    if ends is None:
        done, found = _single_task_reservation(state, placer, job, now)
        if done:
            return found
        ends = running_ends(state, now)
    need = job.total
    free = {r: state.free_total_of(r) for r in need}
    mark = state.mark()
    try:
        released: dict[str, None] = {}
        i = 0
        while i < len(ends):
            t = ends[i][0]
            while i < len(ends) and ends[i][0] == t:
                rj = state.finish(ends[i][1])
                for tp in rj.tasks:
                    released[tp.node] = None
                for r in need:
                    free[r] += rj.job.total.get(r, 0)
                i += 1
            # The summed free capacity is a necessary condition and costs
            # nothing; only then is the real placement tried.
            if any(free[r] < q for r, q in need.items()):
                continue
            found = _try_at(state, placer, job, t, list(released))
            if found is not None:
                return found
        return None
    finally:
        state.rollback(mark)


def _single_task_reservation(
    state: ClusterState, placer: Placer, job: Job, now: float
) -> tuple[bool, HeadReservation | None]:
    """``easy_reservation`` for a job of one task, without touching the
    state: (True, answer), or (False, None) where it does not apply.

    The general method releases running jobs on the state, in order of
    expected end, and tries the placement after each instant. For one task
    the same answer follows from node arithmetic: the task first fits at the
    first instant after which some node's free capacity (its free now plus
    what the jobs ended so far held there) holds it, and the placement,
    filling first the nodes those jobs freed in the order they were freed,
    takes the first such node. Only nodes touched at an instant can start
    to fit then, so each instant costs its own releases, and the tens of
    thousands of releases (and their undoing) a busy cluster can need are
    never made on the state.

    It does not apply to gangs and bags, to required affinity to other jobs
    (it depends on which jobs still run) or to a task that fits now (the
    placement walk decides where): the general method answers those.
    """
    if job.task_count != 1 or any(
        a.required and a.target == "job" for a in (*job.affinity, *job.anti_affinity)
    ):
        return False, None
    spec = job.tasks[0]
    verdict = class_verdict(state, job, 0)
    if not verdict.aligned:
        return True, None  # no node can ever take it: no end changes that
    if placer.fits_now(job):
        return False, None
    aligned_of = verdict.aligned
    device_classes = verdict.device_check
    vdev: dict[str, dict[str, list[str]]] = {}

    def pools(rec: NodeRec) -> dict[str, list[str]]:
        found = vdev.get(rec.name)
        if found is None:
            found = vdev[rec.name] = _freed_devices(state, rec, now)
        return found

    def fits(v: list[int], rec: NodeRec) -> bool:
        cid = rec.cls.id
        fit = fit_count(v, aligned_of[cid])
        if fit and cid in device_classes:
            fit = min(fit, _free_matching(job, spec.resources, rec, pools(rec)))
        return fit > 0

    # Whether some job is past its estimate: the first end is (read without
    # a position, as ``_instants`` reads: see ``ClusterState._passing``).
    ends = state.ends
    overdue = bool(ends) and ends[0][0] <= now
    first = _first_fitting_now(state, now, verdict.need, fits) if overdue else None
    if first is not None:
        t, (rec, v) = now, first
    else:
        later = _first_fitting(state, now, overdue, verdict, fits, pools)
        if later is None:
            return True, None
        t, rec, v = later
    aligned = aligned_of[rec.cls.id]
    held_by_head = {r: q * spec.count for r, q in spec.resources.items()}
    left = [f - q for f, q in zip(v, aligned, strict=True)]
    extra = {rec.name: dict(zip(rec.cls.resources, left, strict=True))}
    return True, HeadReservation(JobReservation(job.id, t, {rec.name: held_by_head}), extra)


_WALK_READS = 4096
"""How many running jobs ``_first_fitting_now`` reads before it leaves the
answer to ``_first_fitting``: a head that fits few of the freed nodes would
otherwise sum up most of them one by one."""


def _first_fitting_now(
    state: ClusterState,
    now: float,
    need_of: Mapping[int, tuple[tuple[int, int], ...]],
    fits: Callable[[list[int], NodeRec], bool],
) -> tuple[NodeRec, list[int]] | None:
    """The node a one-task head takes at "now" when some node freed then
    holds it, with its free vector then; None when none was found within
    ``_WALK_READS`` jobs read (``_first_fitting`` answers then).

    At "now" every job past its estimate ends, and the placement fills the
    freed nodes in the order of (job id, task) of those jobs
    (``_first_freed``): so the first node met walking them in id order
    that holds the task is the one taken. Its vector is summed from the
    jobs on it alone, so this costs the few nodes met before a fit instead
    of the per-node sums of every job past its estimate (``past_estimate``,
    which costs a cohort of jobs passing their estimate together one step
    per job: the slowest cycles of ``bench_scheduler.py``, see
    bench/README.md, h26-cycle)."""
    running = state.running
    recs = state.nodes
    seen: set[str] = set()
    reads = 0
    for job_id in state.past_ids(now):
        reads += 1
        for tp in running[job_id].tasks:
            name = tp.node
            if name in seen:
                continue
            seen.add(name)
            rec = recs[name]
            if rec.bucket is None or rec.cls.id not in need_of:
                continue
            reads += len(rec.jobs)
            v = _free_at(state, rec, now)
            if fits(v, rec):
                return rec, v
        if reads > _WALK_READS:
            return None
    return None


def _past_tasks(state: ClusterState, rec: NodeRec, now: float) -> Iterator[TaskPlacement]:
    """The tasks on ``rec`` of its jobs past their estimate at ``now`` (all
    of which end "now")."""
    name = rec.name
    running = state.running
    for job_id in rec.jobs:
        rj = running[job_id]
        if rj.estimate is None or rj.start + rj.estimate > now:
            continue
        for tp in rj.tasks:
            if tp.node == name:
                yield tp


def _free_at(state: ClusterState, rec: NodeRec, now: float) -> list[int]:
    """``rec``'s free vector once its jobs past their estimate at ``now`` end."""
    v = list(rec.free)
    pos = rec.cls.pos
    for tp in _past_tasks(state, rec, now):
        c = tp.count
        for r, q in tp.resources.items():
            v[pos[r]] += c * q
    return v


def _first_fitting(
    state: ClusterState,
    now: float,
    overdue: bool,
    verdict: Verdict,
    fits: Callable[[list[int], NodeRec], bool],
    pools: Callable[[NodeRec], dict[str, list[str]]],
) -> tuple[float, NodeRec, list[int]] | None:
    """The first instant a one-task head fits, the node it takes then and
    that node's free vector then; None when it never fits. Instant by
    instant: "now" (what ``past_estimate`` holds per node frees), then each
    later expected end, touching only the nodes that end frees."""
    aligned_of = verdict.aligned
    device_classes = verdict.device_check
    running = state.running
    recs = state.nodes
    ends = state.ends
    # What the jobs past their estimate hold, per node: they all end "now".
    past = state.past_estimate(now) if overdue else {}
    # Per node met so far: (free capacity as of the instant, resource
    # positions, record), or None for a node that can never take the task.
    seen: dict[str, tuple[list[int], Mapping[str, int], NodeRec] | None] = {}
    t = now
    # The first instant, "now", frees every node some job past its estimate
    # runs on; only those can start to fit then. The vectors of the others
    # are needed only when none fits (the later instants build on them).
    fitting = _fitting_now(past, recs, verdict.need, fits)
    for name, held in past.items() if not fitting else ():
        rec = recs[name]  # a node someone's job holds is in the state
        if rec.bucket is None or rec.cls.id not in aligned_of:
            seen[name] = None
            continue
        pos = rec.cls.pos
        v = list(rec.free)
        for r, q in held.items():
            v[pos[r]] += q
        seen[name] = (v, pos, rec)
        if fits(v, rec):
            fitting.append((rec, v))
    instants = _instants(ends, now)
    while not fitting:
        nxt = next(instants, None)
        if nxt is None:
            return None
        t, entries = nxt
        touched: dict[str, None] = {}
        for _, job_id in entries:
            for tp in running[job_id].tasks:
                name = tp.node
                slot = seen.get(name, _UNSEEN)
                if slot is None:
                    continue
                if slot is _UNSEEN:
                    rec = recs[name]
                    if rec.bucket is None or rec.cls.id not in aligned_of:
                        seen[name] = None
                        continue
                    slot = seen[name] = (list(rec.free), rec.cls.pos, rec)
                v, pos, rec = slot
                touched[name] = None
                c = tp.count
                for r, q in tp.resources.items():
                    v[pos[r]] += c * q
                if tp.devices and rec.cls.id in device_classes:
                    freed = pools(rec)
                    for r, ids in tp.devices.items():
                        freed[r].extend(ids)
        for name in touched:
            v, _, rec = seen[name]  # type: ignore[misc]
            if fits(v, rec):
                fitting.append((rec, v))
    # The placement fills the freed nodes in the order they were first freed:
    # by (end, job id, task) of the jobs ended by t.
    rec, v = fitting[0]
    first = _first_freed(state, rec, t, now)
    for rv in fitting[1:]:  # as min() by key: the keys are unique
        key = _first_freed(state, rv[0], t, now, first)
        if key is not None:
            first, (rec, v) = key, rv
    return t, rec, v


def _fitting_now(
    past: Mapping[str, Mapping[str, int]],
    recs: Mapping[str, NodeRec],
    need_of: Mapping[int, tuple[tuple[int, int], ...]],
    fits: Callable[[list[int], NodeRec], bool],
) -> list[tuple[NodeRec, list[int]]]:
    """The nodes of ``past`` the task fits on once their jobs past the
    estimate end, in its order, with their free vectors then; a node short
    of a requested resource is left at that, without a vector."""
    out = []
    for name, held in past.items():
        rec = recs[name]
        need = need_of.get(rec.cls.id)
        if need is None or rec.bucket is None:
            continue
        free = rec.free
        names = rec.cls.resources
        for i, q in need:
            if free[i] + held.get(names[i], 0) < q:
                break
        else:
            pos = rec.cls.pos
            v = list(free)
            for r, q in held.items():
                v[pos[r]] += q
            if fits(v, rec):
                out.append((rec, v))
    return out


def _freed_devices(state: ClusterState, rec: NodeRec, now: float) -> dict[str, list[str]]:
    """``rec``'s free devices plus those its jobs past their estimate hold."""
    out = {r: list(ids) for r, ids in rec.free_devices.items()}
    for tp in _past_tasks(state, rec, now):
        for r, ids in tp.devices.items():
            out.setdefault(r, []).extend(ids)
    return out


_UNSEEN: Any = object()


def _first_freed(state: ClusterState, rec: NodeRec, t: float, now: float,
                 beat: tuple[float, str, int] | None = None) -> tuple[float, str, int] | None:
    """Where ``rec`` first appears among the nodes freed by the jobs that end
    by ``t``, released in order of (expected end, job id), each job's tasks
    in order; None where not before ``beat`` (the best of the nodes before)."""
    best = beat
    running = state.running
    for job_id in rec.jobs:
        if best is not None and job_id > best[1] and best[0] <= now:
            continue  # no end comes before "now": it cannot come first
        rj = running[job_id]
        end = INF if rj.estimate is None else max(now, rj.start + rj.estimate)
        if end > t or (best is not None and end > best[0]):
            continue
        for ti, tp in enumerate(rj.tasks):
            if tp.node == rec.name:
                key = (end, job_id, ti)
                if best is None or key < best:
                    best = key
                break
    assert best is not None, "a node freed by t runs a job that ends by t"
    return None if best is beat else best


def _instants(ends: SortedList, now: float) -> Iterator[tuple[float, list[tuple[float, str]]]]:
    """Entries of the index of ends after ``now`` (the jobs not yet past
    their estimate), grouped by instant, soonest first."""
    t = None
    group: list[tuple[float, str]] = []
    for entry in ends.irange((math.nextafter(now, INF),)):
        if entry[0] != t:
            if group:
                assert t is not None
                yield t, group
            t, group = entry[0], []
        group.append(entry)
    if group:
        assert t is not None
        yield t, group


def _free_matching(
    job: Job, resources: Mapping[str, int], rec: NodeRec, pools: Mapping[str, list[str]]
) -> int:
    """How many tasks the free devices in ``pools`` matching the job's device
    terms allow on ``rec`` (as ``Placer._node_candidate`` counts them)."""
    fit: int | None = None
    for r, q in resources.items():
        if r in rec.devices:
            terms = job.constraints.device_terms(family(r))
            by_id = rec.devices[r]
            good = [d for d in pools.get(r, ())
                    if all(term.matches_device(by_id[d]) for term in terms)]
            n = tasks_held(good, by_id, q)  # share slots per GPU, as ``choose``
            fit = n if fit is None else min(fit, n)
    return 1 if fit is None else fit


def _try_at(
    state: ClusterState, placer: Placer, job: Job, t: float, prefer: list[str]
) -> HeadReservation | None:
    result = placer.place(job, prefer=prefer)
    if result.tasks is None:
        return None
    nodes: dict[str, dict[str, int]] = {}
    for tp in result.tasks:
        held = nodes.setdefault(tp.node, {})
        for r, q in tp.resources.items():
            held[r] = held.get(r, 0) + q * tp.count
    extra = {name: state.free(name) for name in nodes}
    return HeadReservation(JobReservation(job.id, t, nodes), extra)


def limits_in_play(
    state: ClusterState, job: Job, extra: dict[str, dict[str, int]]
) -> dict[str, dict[str, int]] | None:
    """``extra`` as the limits of ``job``'s placement past the head, or None
    where they cannot change it, so that the placement takes the one-task
    path (``Placer._place_one``, the compiled ``pick``) instead of the
    limited walk: of the 6,782 ``place`` calls in 5 cycles of
    ``bench_scheduler.py``, 6,010 ran past the head with its limits and
    5,967 of those with limits that cannot change the placement
    (bench/README.md, h28-cycle).

    A limit on a node changes the walk only where the walk meets the node:
    its bucket, in the index, only when its free vector holds one task (the
    limited node is then offered on its own, scored on its limited vector,
    and the rest of its bucket apart). A node that is down, of a class that
    cannot take the task or short of a requested resource now is never met,
    and the walks are the same but for one rule: a limited walk does not
    stop at its first candidate where the options say the first is the best
    (``first_is_best``), it ranks its first ``limit`` candidates, whose best
    is that first by the same rule. ``tests/core/test_backfill_limits.py``
    holds this to the limited placement."""
    if job.task_count != 1:
        return extra
    need_of = class_verdict(state, job, 0).need
    recs = state.nodes
    for name in extra:
        rec = recs.get(name)
        if rec is None or rec.bucket is None:
            continue
        need = need_of.get(rec.cls.id)
        if need is None:
            continue
        free = rec.free
        for i, q in need:
            if free[i] < q:
                break
        else:
            return extra  # it holds a task: the walk meets its bucket
    return None


def use_extra(extra: dict[str, dict[str, int]], tasks: Sequence[TaskPlacement]) -> None:
    """Take a backfilled job's use of reserved nodes off their ``extra``."""
    for tp in tasks:
        room = extra.get(tp.node)
        if room is not None:
            for r, q in tp.resources.items():
                if r in room:
                    room[r] -= q * tp.count
