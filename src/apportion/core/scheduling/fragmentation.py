"""Fragmentation: capacity that is free but that no pending job can use.

A node's free capacity is stranded when no task of any pending job fits in
it (with the job's constraints): four free cores on a node whose memory is
all taken, or a lone free GPU when every waiting job needs two. Computed per
bucket of identical nodes, once per distinct pending job shape.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from apportion.core.scheduling.filters import class_verdict
from apportion.core.scheduling.jobs import Job
from apportion.core.scheduling.state import ClusterState


@dataclass(frozen=True, slots=True)
class FragmentationReport:
    free: Mapping[str, int]
    """Free capacity on ready nodes."""
    stranded: Mapping[str, int]
    """Part of ``free`` on nodes where no pending task fits."""
    stranded_nodes: int
    largest_free: Mapping[str, int]
    pending_shapes: int

    def share(self, resource: str) -> float:
        free = self.free.get(resource, 0)
        return self.stranded.get(resource, 0) / free if free else 0.0


def fragmentation(state: ClusterState, pending: Sequence[Job]) -> FragmentationReport:
    shapes: dict[int, tuple[Job, int]] = {}
    for job in pending:
        for i in range(len(job.tasks)):
            shapes.setdefault(hash((job.shape_hash, i)), (job, i))
    verdicts = [class_verdict(state, job, i) for job, i in shapes.values()]
    stranded: dict[str, int] = {}
    nodes = 0
    for bucket in state.buckets():
        if not any(bucket.free):
            continue
        usable = False
        for verdict in verdicts:
            aligned = verdict.aligned.get(bucket.cls.id)
            if aligned is not None and all(
                f >= q for f, q in zip(bucket.free, aligned, strict=True)
            ):
                usable = True
                break
        if usable or not verdicts:
            continue
        n = len(bucket.nodes)
        nodes += n
        for r, f in zip(bucket.cls.resources, bucket.free, strict=True):
            if f:
                stranded[r] = stranded.get(r, 0) + f * n
    free = state.free_total()
    return FragmentationReport(
        free,
        stranded,
        nodes,
        {r: state.max_free(r) for r in free},
        len(shapes),
    )
