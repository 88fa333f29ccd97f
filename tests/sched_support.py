"""Recounts of what ``ClusterState`` keeps incrementally, for the scheduler's tests."""

from __future__ import annotations

from apportion.core.scheduling import ClusterState


def past_recounted(state: ClusterState, now: float) -> dict[str, dict[str, int]]:
    """Per node, what the running jobs past their estimate at ``now`` hold
    (``ClusterState.past_estimate``), summed from the running jobs."""
    out: dict[str, dict[str, int]] = {}
    for rj in state.running.values():
        if rj.estimate is None or rj.start + rj.estimate > now:
            continue
        for tp in rj.tasks:
            held = out.setdefault(tp.node, {})
            for r, q in tp.resources.items():
                held[r] = held.get(r, 0) + q * tp.count
    return out
