"""The pipeline's status: a ``PlaceResult``, and the words of each reason
its stages (``framework.Placer``), the cycle and explain give, built with the
helpers here.

The status types themselves, ``Reason`` and ``Failure`` with their ``Code``
and ``Kind``, live in ``core.reasons`` (the ledger's refusals use them too)
and are re-exported here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from apportion.core.frozen import quick_init
from apportion.core.reasons import Code, Failure, Kind, Reason
from apportion.core.resources import format_quantity
from apportion.core.scheduling.jobs import Job, TaskPlacement, TaskSpec
from apportion.core.scheduling.state import ClusterState

if TYPE_CHECKING:
    # Only a type: filters builds its verdicts from the Reasons defined here.
    from apportion.core.scheduling.filters import Verdict


@quick_init
@dataclass(frozen=True, slots=True)
class PlaceResult:
    tasks: tuple[TaskPlacement, ...] | None
    failure: Failure | None = None

    @property
    def ok(self) -> bool:
        return self.tasks is not None


# -- the wording of each reason a stage gives: one place words each ----------

AGGREGATE = "Aggregate"
"""The stage that sums free capacity over ready nodes (and explain's advice
drawn from it)."""
QUOTA = "Quota"
"""The queue checks: its existence, priority bounds and quota."""
BACKFILL = "Backfill"
"""When known run times would let a job start, and the order it waits in."""
CYCLE = "Cycle"
"""The scheduling pass itself (its placement limit)."""


def short_in_all(r: str, need: int, have: int, biggest: int) -> Reason:
    """A request larger than the free amount summed over ready nodes."""
    return Reason(
        AGGREGATE, Code.INSUFFICIENT, Kind.BUSY,
        f"needs {format_quantity(r, need)} {r} in all; {format_quantity(r, have)} free "
        f"on ready nodes (largest free on any ready node: {format_quantity(r, biggest)})",
        r, need, have,
    )


def not_enough_free(r: str, have: int) -> Reason:
    """The cycle's shared answer for a job whose total is short on ready
    nodes (no amounts of the job: one answer serves every such job)."""
    return Reason(
        AGGREGATE, Code.INSUFFICIENT, Kind.BUSY,
        f"not enough {r} free on ready nodes now ({format_quantity(r, have)} in all)",
        r, None, have,
    )


def short_gang(r: str, need: int, have: int) -> Reason:
    """Explain's advice for a gang larger than the free amount summed over
    ready nodes."""
    return Reason(
        AGGREGATE, Code.INSUFFICIENT, Kind.BUSY,
        f"gang needs {format_quantity(r, need)} {r} in all; "
        f"{format_quantity(r, have)} free on ready nodes",
        r, need, have,
    )


def over_quota(queue: str, r: str, used: int, limit: int, q: int) -> Reason:
    """A job that would take its queue past its quota now (waiting helps)."""
    return Reason(
        QUOTA, Code.QUOTA, Kind.BUSY,
        f"queue {queue} quota: {r} {format_quantity(r, used)} of "
        f"{format_quantity(r, limit)} in use, job needs {format_quantity(r, q)}",
        r, q, limit - used,
    )


def quota_advice(queue: str, r: str, used: int, limit: int, q: int) -> Reason:
    """``over_quota`` as explain words it (its JSON is pinned: the resource
    name follows the amounts there)."""
    return Reason(
        QUOTA, Code.QUOTA, Kind.BUSY,
        f"queue {queue} quota: {format_quantity(r, used)} of "
        f"{format_quantity(r, limit)} {r} in use, job needs {format_quantity(r, q)}",
        r, q, limit - used,
    )


def short_largest(r: str, q: int, biggest: int) -> Reason:
    """A task larger than the largest free amount on any ready node."""
    return Reason(
        AGGREGATE, Code.INSUFFICIENT, Kind.BUSY,
        f"needs {format_quantity(r, q)} {r}; largest free on any ready node: "
        f"{format_quantity(r, biggest)}",
        r, q, biggest,
    )


def aggregate_short(state: ClusterState, job: Job) -> Failure | None:
    """Whether ``job``'s total request exceeds free capacity summed over
    ready nodes (a necessary condition, O(resources))."""
    free = state.free_total_of
    for r, q in job.total.items():
        have = free(r)
        if have < q:
            return Failure.of(short_in_all(r, q, have, state.max_free(r)))
    return None


def group_aggregate_short(state: ClusterState, spec: TaskSpec) -> Failure | None:
    """Stage 2 for one task group: its total request against free capacity
    summed over ready nodes."""
    for r, q in spec.resources.items():
        need = q * spec.count
        have = state.free_total_of(r)
        if have < need:
            return Failure.of(short_in_all(r, need, have, state.max_free(r)))
    return None


def busy_failure(state: ClusterState, job: Job, spec: TaskSpec, remaining: int) -> Failure:
    """The walk found no candidate for the ``remaining`` tasks of a group."""
    tasks = f"{remaining} more task(s)" if spec.count > 1 else "the task"
    reasons = tuple(
        short_largest(r, q, biggest)
        for r, q in spec.resources.items()
        if (biggest := state.max_free(r)) < q
    )
    detail = "; ".join(reason.message for reason in reasons) if reasons else (
        "no ready node has all of " + ", ".join(
            f"{format_quantity(r, q)} {r}" for r, q in spec.resources.items()
        ) + " free at once, with its constraints"
    )
    return Failure(Code.INSUFFICIENT, Kind.BUSY, f"no room now for {tasks}: {detail}", reasons)


def no_class_failure(verdict: Verdict, spec: TaskSpec) -> Failure:
    """No node class survived class feasibility: the rejections counted by
    message; NEVER unless some class was rejected for a condition (not ready,
    unhealthy) that can change."""
    kind = Kind.NEVER
    if any(reason.kind is Kind.CONDITION for _, reason in verdict.rejected):
        kind = Kind.CONDITION
    counted = nodes_by_message((cls.size, reason) for cls, reason in verdict.rejected)
    total = sum(n for _, n in counted)
    summary = "; ".join(f"{msg} ({n})" for msg, n in counted)
    reasons = tuple(reason for _, reason in verdict.rejected)
    code = verdict.rejected[0][1].code if verdict.rejected else Code.CAPACITY
    return Failure(code, kind, f"0/{total} nodes can take it: {summary or 'no nodes'}", reasons)


def nodes_by_message(rejected: Iterable[tuple[int, Reason]]) -> list[tuple[str, int]]:
    """``(nodes, reason)`` pairs (a class's size and its reason) counted by
    message, most nodes first (ties in first-seen order)."""
    counts: dict[str, int] = {}
    for size, reason in rejected:
        counts[reason.message] = counts.get(reason.message, 0) + size
    return sorted(counts.items(), key=lambda kv: -kv[1])
