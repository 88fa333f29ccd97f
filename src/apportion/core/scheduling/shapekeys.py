"""Small integer keys for the shapes of waiting jobs, kept from one cycle to
the next in the state's cache.

Behind a blocked head most of a long queue meets the failure remembered for
its shape (``cycle._by_shape``), and telling that a job's shape is the one
remembered meant comparing the two shapes, nested tuples of each job's own:
most of what answering such a job cost. A job's shape never changes, so it
is compared once, when the job is first met, with the first shape seen of
its hash; jobs of equal shapes get that shape's key (from 1), a job whose
shape only shares a hash with another gets key 0 (no key: the cycle looks
at it job by job, as before).

The keys depend on the jobs alone, not on the nodes: clearing the state's
cache when the set of node classes changes only costs learning them again,
as a state built afresh for each cycle (the server's) does every cycle.

What is kept: every job met (its id, the job and its key) and every shape
seen, until ``of`` starts afresh, when the jobs remembered outnumber twice
the queue plus ``_SPARE`` (jobs that left the queue), or when the shapes
outnumber the jobs plus ``_SPARE`` (ids sent again with new shapes: the
old shape stays, the job's entry is replaced).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from apportion.core.scheduling.jobs import Job
from apportion.core.scheduling.state import ClusterState

_CACHE = "shape-keys"

_SPARE = 1024
"""Jobs (beyond twice the queue met last) or shapes (beyond the jobs) kept
that no waiting job may need, before the keys are learned afresh."""


class ShapeKeys:
    """Per job id, the job met and its shape's key; per key, the shape and the
    job total it stands for."""

    __slots__ = ("by_hash", "hashes", "of_job", "shapes", "totals")

    def __init__(self) -> None:
        self.of_job: dict[str, tuple[Job, int]] = {}
        self.by_hash: dict[int, int] = {}
        self.shapes: list[tuple[Any, ...]] = [()]
        self.hashes: list[int] = [0]
        self.totals: list[Mapping[str, int]] = [{}]

    @staticmethod
    def of(state: ClusterState, waiting: int) -> ShapeKeys:
        """The keys kept in ``state``, started afresh when they remember many
        more jobs than the ``waiting`` ones (jobs that left the queue) or
        many more shapes than jobs (shapes no job has any more)."""
        keys: ShapeKeys | None = state.cache.get(_CACHE)
        if (keys is None or len(keys.of_job) > 2 * waiting + _SPARE
                or len(keys.shapes) > len(keys.of_job) + _SPARE):
            keys = state.cache[_CACHE] = ShapeKeys()
        return keys

    def key(self, job: Job) -> int:
        """``job``'s key (0: none), learned when ``job`` is met first."""
        hit = self.of_job.get(job.id)
        if hit is not None and hit[0] is job:
            return hit[1]
        return self.learn(job)

    def learn(self, job: Job) -> int:
        """``job``'s key (0: none), remembered for the job."""
        k = 0
        if job.cacheable:  # a failure of any other stays its own
            h = job.shape_hash
            k = self.by_hash.get(h, 0)
            if not k:
                k = self.by_hash[h] = len(self.shapes)
                self.shapes.append(job.shape)
                self.hashes.append(h)
                self.totals.append(job.total)
            elif not self.same(k, job.shape):
                k = 0
        self.of_job[job.id] = (job, k)
        return k

    def same(self, k: int, shape: object) -> bool:
        """Whether ``shape`` is key ``k``'s shape."""
        mine = self.shapes[k]
        return mine is shape or mine == shape
