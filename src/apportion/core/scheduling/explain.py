"""Why a job waits, what would let it run, and whether to accept it at all.

``explain`` asks every filter plugin about every node (the placement walk
stops early and does not), counts the nodes by first reason, and turns the
numbers into advice: ``needs 2 gpu; largest free on any ready node: 1``.

``validate_job`` refuses at submission what can never run: an unknown queue,
a priority outside the queue's bounds, a request beyond the queue's quota,
or one no node could hold even empty (not-ready nodes count as possible:
an operator can bring them back).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NoReturn

from apportion.core.errors import JobRejected
from apportion.core.reasons import Code, Failure, Kind, Reason
from apportion.core.resources import format_quantity
from apportion.core.scheduling.backfill import easy_reservation
from apportion.core.scheduling.capacity import NodeClass
from apportion.core.scheduling.engine import Placer
from apportion.core.scheduling.filters import CLASS_FILTERS, NodeReady, node_reasons
from apportion.core.scheduling.interface import PlaceOptions
from apportion.core.scheduling.jobs import Job, Queue, TaskSpec
from apportion.core.scheduling.scorers import SCORERS
from apportion.core.scheduling.state import ClusterState
from apportion.core.scheduling.status import (
    BACKFILL,
    QUOTA,
    nodes_by_message,
    quota_advice,
    short_gang,
    short_largest,
)


@dataclass(frozen=True, slots=True)
class Explanation:
    job_id: str
    status: str
    """``fits`` (would start now), ``busy`` (waits for capacity), ``quota``,
    ``condition`` (only nodes that are not ready could take it) or ``never``."""
    nodes_total: int
    counts: Mapping[str, int]
    """Reason group (``insufficient gpu``, ``label``, ``not_ready``...) -> nodes."""
    messages: Mapping[str, int]
    """Distinct reason messages -> nodes, for the detail."""
    advice: tuple[Reason, ...]
    """What would let it run (quota, shortages, expected start), first first."""
    earliest_start: float | None = None
    """When known running-job ends would let it start (None: unknown)."""
    per_node: Mapping[str, Reason] = field(default_factory=dict)

    @property
    def hints(self) -> tuple[str, ...]:
        """The advice in words."""
        return tuple(reason.message for reason in self.advice)

    def summary(self) -> str:
        if self.status == "fits":
            head = f"fits now ({self.nodes_total - sum(self.counts.values())} of "
            head += f"{self.nodes_total} nodes could take a task)"
        else:
            ok = self.nodes_total - sum(self.counts.values())
            parts = ", ".join(f"{n} {g}" for g, n in self.counts.items())
            head = f"{ok}/{self.nodes_total} nodes available" + (f": {parts}" if parts else "")
        return "; ".join([head, *self.hints])


def explain(
    state: ClusterState,
    job: Job,
    *,
    now: float = 0.0,
    queues: Mapping[str, Queue] | None = None,
    detail: bool = False,
) -> Explanation:
    """Count, per reason, the nodes that cannot take ``job``'s tasks now, and
    say what would let it run."""
    counts: dict[str, int] = {}
    messages: dict[str, int] = {}
    per_node: dict[str, Reason] = {}
    kinds: set[Kind] = set()
    spec = max(job.tasks, key=lambda s: sum(s.resources.values()))
    for name, rec in state.nodes.items():
        reason = node_reasons(state, job, spec, rec)
        if reason is None:
            continue
        counts[reason.group] = counts.get(reason.group, 0) + 1
        messages[reason.message] = messages.get(reason.message, 0) + 1
        kinds.add(reason.kind)
        if detail:
            per_node[name] = reason
    hints = _resource_hints(state, job)
    quota = _quota_hint(state, job, queues or {})
    if quota:
        hints.insert(0, quota)
    fits = _fits_now(state, job)
    earliest = None
    if fits and not quota:
        status = "fits"
    elif quota:
        status = "quota"
    else:
        status = _status(state, job, kinds)
        if status == "busy":
            earliest = _earliest(state, job, now)
            if earliest is not None:
                hints.append(Reason(BACKFILL, Code.INSUFFICIENT, Kind.BUSY,
                                    f"expected to fit at {earliest:.0f} as running jobs end"))
    ordered = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return Explanation(job.id, status, len(state.nodes), ordered,
                       dict(sorted(messages.items(), key=lambda kv: (-kv[1], kv[0]))),
                       tuple(hints), earliest, per_node)


_PROBE = PlaceOptions(((SCORERS["binpack"], 1.0),))


def _fits_now(state: ClusterState, job: Job) -> bool:
    mark = state.mark()
    try:
        return Placer(state, _PROBE).place(job).ok
    finally:
        state.rollback(mark)


def _earliest(state: ClusterState, job: Job, now: float) -> float | None:
    found = easy_reservation(state, Placer(state, _PROBE), job, now)
    return None if found is None else found.reservation.start


def _status(state: ClusterState, job: Job, kinds: set[Kind]) -> str:
    for spec in job.tasks:
        capacity, ready_capacity = _capacity_fit(state, job, spec)
        if capacity < spec.count:
            return "never"
        if ready_capacity < spec.count:
            return "condition"
    return "busy"


def _capacity_fit(state: ClusterState, job: Job, spec: TaskSpec) -> tuple[int, int]:
    """How many tasks of ``spec`` all nodes, and all ready nodes, could hold if
    they were empty."""
    every = ready = 0
    for cls in state.classes:
        if not cls.size or _never(job, spec, cls) is not None:
            continue
        aligned = state.align(cls, spec.resources)
        assert aligned is not None
        per_node = min(c // q for c, q in zip(cls.capacity, aligned, strict=True) if q)
        every += per_node * cls.size
        if cls.schedulable:
            ready += per_node * cls.size
    return every, ready


def _never(job: Job, spec: TaskSpec, cls: NodeClass) -> Reason | None:
    for plugin in CLASS_FILTERS:
        if isinstance(plugin, NodeReady):
            continue
        reason = plugin.check_class(job, spec, cls)
        if reason is not None:
            return reason
    return None


def _resource_hints(state: ClusterState, job: Job) -> list[Reason]:
    hints: list[Reason] = []
    for spec in job.tasks:
        for r, q in spec.resources.items():
            biggest = state.max_free(r)
            if biggest < q:
                hints.append(short_largest(r, q, biggest))
            total = q * spec.count
            if spec.count > 1 and state.free_total_of(r) < total:
                hints.append(short_gang(r, total, state.free_total_of(r)))
    return hints


def _quota_hint(state: ClusterState, job: Job, queues: Mapping[str, Queue]) -> Reason | None:
    queue = queues.get(job.queue)
    if queue is None:
        return None
    used = state.usage(job.queue)
    for r, q in job.total.items():
        limit = queue.quota.get(r)
        if limit is not None and used.get(r, 0) + q > limit:
            return quota_advice(queue.name, r, used.get(r, 0), limit, q)
    return None


def validate_job(job: Job, queues: Mapping[str, Queue], state: ClusterState) -> None:
    """Refuse, with the reason, a job that can never run; return if it can."""
    queue = queues.get(job.queue)
    if queue is None:
        known = ", ".join(sorted(queues)) or "none"
        _reject(job, "queue", Reason(QUOTA, Code.QUEUE, Kind.NEVER,
                                     f"queue: unknown queue {job.queue!r} (queues: {known})"))
    if queue.clamp(job.priority) != job.priority:
        _reject(job, "priority", Reason(
            QUOTA, Code.PRIORITY, Kind.NEVER,
            f"priority: {job.priority} is outside queue {queue.name}'s bounds "
            f"[{queue.min_priority}, {queue.max_priority}]",
        ))
    for r, q in job.total.items():
        limit = queue.quota.get(r)
        if limit is not None and q > limit:
            _reject(job, f"resources.{r}", Reason(
                QUOTA, Code.QUOTA, Kind.NEVER,
                f"resources.{r}: the job needs {format_quantity(r, q)} in all but queue "
                f"{queue.name}'s quota is {format_quantity(r, limit)}; it can never fit",
                r, q, limit,
            ))
    for spec in job.tasks:
        capacity, _ = _capacity_fit(state, job, spec)
        # A gang's tasks run together; a bag's (an array's) one after another.
        if capacity < (spec.count if job.gang or job.task_count == 1 else 1):
            missing = _unoffered(state, spec)
            if missing:
                # Said plainly: counting nodes that lack it reads as waiting for one.
                _reject(job, f"resources.{missing[0]}", Reason(
                    "ResourcesFit", Code.UNKNOWN_RESOURCE, Kind.NEVER,
                    f"resources.{missing[0]}: no node has {', '.join(missing)}", missing[0],
                ))
            raise JobRejected(_never_failure(state, job, spec, capacity), field="tasks",
                              job=job.id)


def _reject(job: Job, field: str, reason: Reason) -> NoReturn:
    raise JobRejected(Failure.of(reason), field=field, job=job.id)


def _unoffered(state: ClusterState, spec: TaskSpec) -> list[str]:
    """The resources of ``spec`` that no node offers at all (none with no
    nodes: "there are no nodes" says more)."""
    classes = [cls for cls in state.classes if cls.size]
    if not classes:
        return []
    return sorted(r for r in spec.resources if not any(r in cls.pos for cls in classes))


def _never_failure(state: ClusterState, job: Job, spec: TaskSpec, capacity: int) -> Failure:
    """No node could ever hold the group: the classes' reasons, counted by
    message."""
    rejected: list[tuple[int, Reason]] = []
    for cls in state.classes:
        if not cls.size:
            continue
        reason = _never(job, spec, cls)
        if reason is not None:
            rejected.append((cls.size, reason))
    reasons = [reason for _, reason in rejected]
    parts = [f"{n} node(s): {msg}" for msg, n in nodes_by_message(rejected)]
    if spec.count > 1:
        parts.append(f"all nodes together could hold {capacity} of its {spec.count} tasks")
    summary = "; ".join(parts) or "there are no nodes"
    message = (f"no node can ever hold {'these tasks' if spec.count > 1 else 'this task'}: "
               f"{summary}")
    code = reasons[0].code if reasons else Code.CAPACITY
    return Failure(code, Kind.NEVER, message, tuple(reasons))
