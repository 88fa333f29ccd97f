"""Where a placement walk starts, and small helpers of the pipeline
(``framework``): the index and position to walk from, how many tasks fit a
free vector, a backfill's limited nodes by bucket, and the order of a gang's
task groups.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from apportion.core.scheduling.capacity import NodeRec
from apportion.core.scheduling.freeindex import FreeIndex
from apportion.core.scheduling.jobs import TaskSpec
from apportion.core.scheduling.state import ClusterState


def fit_count(free: Sequence[int], aligned: Sequence[int]) -> int:
    """How many tasks of ``aligned`` fit in ``free``."""
    best = -1
    for f, q in zip(free, aligned, strict=True):
        if q:
            n = f // q
            if n < best or best < 0:
                best = n
                # Below zero too: a node whose capacity shrank under what
                # runs has negative free; kept, -1 read as "no bound yet".
                if n <= 0:
                    return 0
    return best if best > 0 else 0


def walk_index(
    state: ClusterState, spec: TaskSpec
) -> tuple[FreeIndex | None, int, int, str]:
    """The index to walk: the requested resource with the fewest buckets
    holding enough of it (the shortest walk), where to start (block,
    offset), and that resource."""
    # Copied in C at the top of ``pick`` (_freeindex_c.pyx): change both
    # together. test_sched_pick_native's
    # test_the_same_results_state_and_index_as_the_python_walk and
    # test_the_same_with_any_amounts_and_weights compare them.
    resources = spec.resources
    if len(resources) == 1:
        # One resource (a GPU job, a processor count): nothing to compare,
        # and an entry lies at the start exactly when the bisect found a
        # block (what ``start``'s count > 0 says below).
        [(r, q)] = resources.items()
        index = state.index(r)
        if index is None:
            return None, 0, 0, r
        k, i = index.bisect(q)
        return (index, k, i, r) if k < len(index.lasts) else (None, 0, 0, r)
    best = None
    best_k = best_i = 0
    best_len = -1
    best_r = ""
    for r, q in spec.resources.items():
        index = state.index(r)
        if index is None:
            return None, 0, 0, r
        k, i, n = index.start(q)
        if best_len < 0 or n < best_len:
            best, best_k, best_i, best_len, best_r = index, k, i, n, r
    if best_len <= 0:
        return None, 0, 0, best_r
    return best, best_k, best_i, best_r


def limits_by_bucket(
    state: ClusterState, limits: Mapping[str, Mapping[str, int]]
) -> dict[int, list[NodeRec]]:
    out: dict[int, list[NodeRec]] = {}
    recs = state.nodes
    for name in limits:
        rec = recs.get(name)
        if rec is not None and rec.bucket is not None:
            out.setdefault(rec.bucket.id, []).append(rec)
    return out


def hardness(spec: TaskSpec, state: ClusterState) -> float:
    # Hardest group first: the largest share of the scarcest resource, so a
    # gang of one big and many small tasks does not fill the big one's node.
    return -max(
        (q * spec.count / max(1, state.free_total_of(r)) for r, q in spec.resources.items()),
        default=0.0,
    )
