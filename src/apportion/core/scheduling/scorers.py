"""Score plugins: rank feasible candidates, each on a 0..1 scale.

A strategy weights them (``interface.PlaceOptions.scorers``); the weighted
sum picks the node. Scores are normalized per node (a share of capacity, a
position within the cluster's cost range), not across the candidates of one
pick, so a score means the same thing whichever candidates the walk found.

``tight_first`` (see ``interface.ScorePlugin``): bin-pack and fitness rise
as the free amount falls; balanced is constant on one resource; cost,
affinity and topology read only the class and the context (a bucket runs
"no job" for affinity to jobs), the same for every bucket of one class;
spread falls.
"""

from __future__ import annotations

from collections.abc import Sequence

from apportion.core.labels import LabelRequirement
from apportion.core.scheduling.constraints import labels_match
from apportion.core.scheduling.filters import runs_matching
from apportion.core.scheduling.interface import Candidate, PlaceContext, PlaceOptions, ScorePlugin
from apportion.core.scheduling.jobs import Job
from apportion.core.scheduling.state import ClusterState


class BinPack:
    """Most allocated first: the requested resources' share of capacity in
    use after the placement, averaged. Keeps whole nodes free for big jobs
    and lets idle nodes be drained or scaled away."""

    name = "binpack"
    tight_first = True
    def per_node(self, job: Job) -> bool:
        return False

    def applies(self, job: Job, state: ClusterState) -> bool:
        return True

    @staticmethod
    def score(cand: Candidate, ctx: PlaceContext | None = None) -> float:
        """The share in use after the placement (``Spread`` reads it too):
        one call per candidate, not a method that calls a helper."""
        cap = cand.cls.capacity
        if len(cap) == 1:
            # One resource (a GPU node, a parallel machine's processor): the
            # same sum and mean, without the loop.
            q = cand.aligned[0]
            return (cap[0] - cand.free[0] + q) / cap[0] if q else 0.0
        total = 0.0
        n = 0
        for c, f, q in zip(cap, cand.free, cand.aligned, strict=True):
            if q:
                total += (c - f + q) / c
                n += 1
        return total / n if n else 0.0


class Spread:
    """Least allocated first: the opposite of bin-pack, for resilience and
    for jobs that contend for memory bandwidth."""

    name = "spread"
    tight_first = False
    def per_node(self, job: Job) -> bool:
        return False

    def applies(self, job: Job, state: ClusterState) -> bool:
        return True

    def score(self, cand: Candidate, ctx: PlaceContext) -> float:
        return 1.0 - BinPack.score(cand)


class Balanced:
    """Even use across resources after the placement (1 when every resource
    of the node is used to the same share), so no node ends with its cpu
    exhausted and its memory idle, or the reverse."""

    name = "balanced"
    tight_first = True
    def per_node(self, job: Job) -> bool:
        return False

    def applies(self, job: Job, state: ClusterState) -> bool:
        return True

    def score(self, cand: Candidate, ctx: PlaceContext) -> float:
        # A resource the node declares with capacity 0 has no share: left
        # out (as Kubernetes' NodeResourcesFit leaves out resources with
        # zero allocatable), not a division by zero.
        shares = [
            (c - f + q) / c for c, f, q in zip(cand.cls.capacity, cand.free, cand.aligned,
                                                 strict=True) if c
        ]
        if len(shares) < 2:
            return 1.0
        return 1.0 - (max(shares) - min(shares))


class Fitness:
    """How closely the request matches what the node has free, over all the
    node's resources, requested or not: a cpu-only job scores low on a node
    whose GPUs would stay idle, so big and special nodes stay free for the
    jobs that need them."""

    name = "fitness"
    tight_first = True
    def per_node(self, job: Job) -> bool:
        return False

    def applies(self, job: Job, state: ClusterState) -> bool:
        return True

    def score(self, cand: Candidate, ctx: PlaceContext) -> float:
        cap = cand.cls.capacity
        if len(cap) == 1:
            c = cap[0]
            return 1.0 - (cand.free[0] - cand.aligned[0]) / c if c else 1.0
        # A resource of capacity 0 (no task can ask for it: nothing is free)
        # is left out of the mean, as Kubernetes' NodeResourcesFit leaves out
        # resources with zero allocatable; the compiled score hands such
        # classes back to this one (``state.inexact``).
        left = 0.0
        m = len(cap)
        for c, f, q in zip(cap, cand.free, cand.aligned, strict=True):
            if c:
                left += (f - q) / c
            else:
                m -= 1
        return 1.0 - left / m if m else 1.0


class Cost:
    """Cheaper nodes first, by the ``cost`` label (per hour), placed within
    the range of costs in the cluster; a node without the label scores in the
    middle."""

    name = "cost"
    tight_first = True
    def per_node(self, job: Job) -> bool:
        return False

    def applies(self, job: Job, state: ClusterState) -> bool:
        return True

    def score(self, cand: Candidate, ctx: PlaceContext) -> float:
        cost = cand.cls.cost
        if cost is None:
            return 0.5
        lo, hi = _cost_range(ctx.state)
        if hi <= lo:
            return 1.0
        return (hi - cost) / (hi - lo)


def _cost_range(state: ClusterState) -> tuple[float, float]:
    key = ("cost-range",)
    hit = state.cache.get(key)
    if hit is None:
        costs = [c.cost for c in state.classes if c.cost is not None and c.size]
        hit = (min(costs), max(costs)) if costs else (0.0, 0.0)
        state.cache[key] = hit
    lo, hi = hit
    return float(lo), float(hi)


class AffinityScore:
    """Preferred affinity and anti-affinity, to node labels or to jobs on the
    node, weighted: 1 when every attracting term holds and no repelling one
    does, 0 for the reverse. The terms are ``jobs.Affinity``; this plugin
    scores them."""

    name = "affinity"
    tight_first = True

    def per_node(self, job: Job) -> bool:
        if not job.affinity and not job.anti_affinity:
            return False  # most jobs (as in ``applies``)
        return any(not a.required and a.target == "job"
                   for a in (*job.affinity, *job.anti_affinity))

    def applies(self, job: Job, state: ClusterState) -> bool:
        if not job.affinity and not job.anti_affinity:
            return False  # most jobs: asked on every placement, so no tuple built
        return any(not a.required for a in (*job.affinity, *job.anti_affinity))

    def score(self, cand: Candidate, ctx: PlaceContext) -> float:
        job = ctx.job
        total = 0
        got = 0
        for sign, terms in ((1, job.affinity), (-1, job.anti_affinity)):
            for a in terms:
                if a.required:
                    continue
                total += abs(a.weight)
                if self._holds(a.selector, a.target, cand, ctx):
                    got += sign * a.weight
        if not total:
            return 0.5
        return (got + total) / (2 * total)

    @staticmethod
    def _holds(
        selector: tuple[LabelRequirement, ...], target: str, cand: Candidate, ctx: PlaceContext
    ) -> bool:
        if target == "node":
            return labels_match(cand.cls.labels, selector) is None
        if cand.rec is None:
            return False
        return runs_matching(cand.rec, selector, ctx.state, ctx.job.id)


class Topology:
    """Keep a gang in one facility and zone: the share of its tasks placed
    so far that sit in the candidate's (facility, zone)."""

    name = "topology"
    tight_first = True
    def per_node(self, job: Job) -> bool:
        return False

    def applies(self, job: Job, state: ClusterState) -> bool:
        return job.task_count > 1

    def score(self, cand: Candidate, ctx: PlaceContext) -> float:
        if not ctx.placed:
            return 0.5
        labels = cand.cls.labels
        key = (labels.get("facility", ""), labels.get("zone", ""))
        return ctx.zones.get(key, 0) / ctx.placed


SCORERS = {
    p.name: p
    for p in (BinPack(), Spread(), Balanced(), Fitness(), Cost(), AffinityScore(), Topology())
}


NATIVE_CODES: dict[type, int] = {BinPack: 1, Spread: 2, Fitness: 3, Balanced: 4}
"""The plugins whose score ``_freeindex_c.pick`` computes in C, by the code
it knows each by: formulas of the class capacity, the free vector and the
request alone (``Placer._place_one``)."""


def native_codes(scorers: Sequence[tuple[ScorePlugin, float]]
                 ) -> tuple[tuple[int, float], ...] | None:
    """``scorers`` as ``_freeindex_c.pick`` scores them (code, weight), or
    None where one of them is a plugin it does not score."""
    out = []
    for plugin, weight in scorers:
        code = NATIVE_CODES.get(type(plugin))
        if code is None:
            return None
        out.append((code, weight))
    return tuple(out)


PLAIN_APPLIES: dict[type, bool] = {
    BinPack: True, Spread: True, Balanced: True, Fitness: True, Cost: True,
    AffinityScore: False, Topology: False,
}
"""Whether each plugin applies to a plain job: one task, no affinity or
anti-affinity terms (``applies`` reads nothing else of the job, and nothing
of the state). None of them is per node for such a job."""


def plain_scorers(options: PlaceOptions
                  ) -> tuple[tuple[tuple[ScorePlugin, float], ...],
                             tuple[tuple[int, float], ...] | None] | None:
    """``Placer._scorers`` of every plain job (``PLAIN_APPLIES``) under
    ``options``, with their ``native_codes``; None where a plugin is not one
    of these (its answers may depend on more)."""
    out: list[tuple[ScorePlugin, float]] = []
    for plugin, weight in options.scorers:
        applies = PLAIN_APPLIES.get(type(plugin))
        if applies is None:
            return None
        if weight and applies:
            out.append((plugin, weight))
    return tuple(out), native_codes(out)
