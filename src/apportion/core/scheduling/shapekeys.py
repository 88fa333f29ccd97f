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

from apportion.core.reasons import Failure
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


class ShapeAnswers:
    """Per shape key, the failure a job of that shape meets past the head
    (as ``cycle._one_by_one`` finds it), or None where the job must be looked at:
    no failure of that shape remembered past the head, or the summed free
    capacity no longer holds the shape. Within a cycle failures are only
    added (``_backfill`` remembers one for the shape it looked at) and free
    capacity only shrinks (when a job starts), so each ``_backfill``
    changes at most its own shape's answer, and a start drops the answers
    whose shapes no longer fit."""

    __slots__ = ("by_key", "failed", "free", "keys", "known", "seen", "top", "where")

    def __init__(self, keys: ShapeKeys, failed: Mapping[tuple[object, int], tuple[Any, Failure]],
                 free: Mapping[str, int], where: object) -> None:
        """``failed`` is the cycle's failures remembered by (where, shape
        hash); ``where`` the one past the head; ``free`` the summed free
        capacity (live: it shrinks as jobs start)."""
        self.keys = keys
        self.where = where
        self.known = keys.of_job.get
        """Per job id, the job met and its key (``ShapeKeys.of_job``)."""
        self.failed = failed
        self.free = free
        self.by_key: list[Failure | None] = [None] * len(keys.shapes)
        self.seen: list[object] = [None] * len(keys.shapes)
        """Per key, the remembered entry its answer was made from."""
        self.top: dict[str, int] = {}
        """Per resource, the most that any answered shape asks for: while the
        summed free capacity covers it, every answered shape still fits."""
        for where, h in list(failed):
            k = keys.by_hash.get(h, 0) if where == self.where else 0
            if k:
                self._check(k)

    def answer(self, job: Job) -> Failure | None:
        """The failure ``job`` meets past the head, or None: look at it."""
        k = self.keys.key(job)
        if k >= len(self.by_key):  # a new shape: its answer is made now
            self.by_key.append(None)
            self.seen.append(None)
            self._check(k)
        return self.by_key[k]

    def after(self, job: Job, started: bool) -> None:
        """Bring the answers up to date after ``_backfill`` looked at ``job``."""
        k = self.keys.by_hash.get(job.shape_hash, 0)
        if k:  # a failure may be new for its hash (or of another shape)
            self._check(k)
        if started:
            free = self.free
            for r, q in self.top.items():  # a loop, not ``any``: ~1,100 starts a cycle
                if free.get(r, 0) < q:
                    self._refit()
                    return

    def _check(self, k: int) -> None:
        hit = self.failed.get((self.where, self.keys.hashes[k]))
        if hit is self.seen[k]:
            return
        self.seen[k] = hit
        self.by_key[k] = None
        if hit is not None and self.keys.same(k, hit[0]):
            total = self.keys.totals[k]
            if self._fits(total):
                self.by_key[k] = hit[1]
                self._raise_top(total)

    def _fits(self, total: Mapping[str, int]) -> bool:
        free = self.free
        return all(free.get(r, 0) >= q for r, q in total.items())

    def _raise_top(self, total: Mapping[str, int]) -> None:
        top = self.top
        for r, q in total.items():
            if q > top.get(r, 0):
                top[r] = q

    def _refit(self) -> None:
        """Drop the answers of shapes the summed free capacity no longer
        holds (``_backfill`` tells their jobs what is short)."""
        self.top = {}
        totals = self.keys.totals
        for k, failure in enumerate(self.by_key):
            if failure is None:
                continue
            total = totals[k]
            if self._fits(total):
                self._raise_top(total)
            else:
                self.by_key[k] = None
