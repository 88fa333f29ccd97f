"""The placement pipeline: feasibility, then ranking, then the grant.

Modelled on Nomad's ``scheduler/stack.go`` (a chain of feasibility iterators
feeding rank iterators and a limit) and on the Kubernetes scheduling
framework (small Filter and Score plugins, every rejection a ``Reason`` that
names its plugin). One task group of a job goes through these stages:

1. **Class feasibility** (``filters.class_verdict``): node state, capacity,
   labels, node affinity, device models, once per node class and cached by
   job shape. It runs first because it is cached and prunes whole classes;
   when no class survives the job can never run (or only on nodes that are
   not ready), which explain reports without looking at a single node.
2. **Aggregate check**: the task group's total request against free capacity
   summed over ready nodes, O(1). A job that cannot fit anywhere now stops
   here instead of walking the index.
3. **Index walk** (``_walk``): from the index of the requested resource
   with the fewest buckets holding enough of it, bisect to the first such
   bucket, and walk upwards (tight fit first, for packing strategies) or
   down from the top (loosest first, for spreading), skipping index blocks
   whose bounds or class mask rule the request out. Each bucket is checked
   against the class verdict and its free vector (that search is the
   index's, ``FreeIndex.fitting``: compiled where ``_freeindex_c`` was
   built, ``fastindex``); node-level checks (free
   matching devices, jobs on the node) run only for jobs and classes that
   need them. The walk stops after
   ``limit`` candidates, the way Nomad's LimitIterator does: the index order
   already put good candidates first, so scoring every node would buy little.
4. **Scoring**: the strategy's score plugins, each giving 0..1, weighted and
   summed; ties go to the earlier candidate in walk order.
5. **Grant**: as many tasks as the strategy packs on the chosen node (or
   bucket of identical nodes), with devices chosen by ``devices.choose``.

A job's task groups are placed inside one state transaction: a gang that
cannot place its last task rolls back every grant, so no partial gang ever
holds resources, and two gangs cannot deadlock by holding halves.

The types plugins and strategies see are in ``interface``; the failures
the stages answer with, in ``status``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

from apportion.core.reasons import Failure
from apportion.core.scheduling import devices as dev
from apportion.core.scheduling.capacity import Bucket, NodeRec
from apportion.core.scheduling.constraints import family
from apportion.core.scheduling.fastindex import maker, pick
from apportion.core.scheduling.filters import Verdict, class_verdict
from apportion.core.scheduling.filters import need_past as _need_past
from apportion.core.scheduling.interface import (
    Candidate,
    PlaceContext,
    PlaceOptions,
    ScorePlugin,
)
from apportion.core.scheduling.jobs import Job, TaskPlacement, TaskSpec
from apportion.core.scheduling.lone import scored_per_node, take_lone
from apportion.core.scheduling.scorers import native_codes, plain_scorers
from apportion.core.scheduling.state import ClusterState
from apportion.core.scheduling.status import (
    PlaceResult,
    aggregate_short,
    busy_failure,
    group_aggregate_short,
    no_class_failure,
)
from apportion.core.scheduling.walkstart import fit_count, hardness, limits_by_bucket, walk_index

__all__ = [  # the interface and status types are re-exported: they lived here
    "Candidate", "Failure", "PlaceContext", "PlaceOptions", "PlaceResult", "Placer",
    "ScorePlugin", "aggregate_short", "fit_count",
]


_new_task = maker(TaskPlacement)  # the compiled constructor: one a placement
_UNBOUNDED = 1 << 62
"""The task count a node filter starts from: no filter has bounded it yet."""


class Placer:
    """Places whole jobs on a ``ClusterState`` with one strategy's options."""

    def __init__(self, state: ClusterState, options: PlaceOptions) -> None:
        self.state = state
        self._options = options
        self._limits: dict[str, dict[str, int]] | None = None
        # What ``_scorers`` and ``_per_node`` answer for every plain job
        # (``scorers.plain_scorers``), and ``pick``'s codes for them: asked
        # once a cycle, not at each placement. Derived from ``_options``,
        # which is why ``options`` is read-only (a new strategy, a new Placer).
        self._plain = plain_scorers(options)

    @property
    def options(self) -> PlaceOptions:
        """The strategy's options this Placer was made with (read-only: the
        plain jobs' scorers were derived from them)."""
        return self._options

    def _spend(self, rec: NodeRec, aligned: tuple[int, ...], n: int) -> None:
        lim = self._limits.get(rec.name) if self._limits else None
        if lim:
            for r, q in zip(rec.cls.resources, aligned, strict=True):
                if q and r in lim:
                    lim[r] -= n * q

    def _scorers(self, job: Job) -> Sequence[tuple[ScorePlugin, float]]:
        state = self.state
        return [(p, w) for p, w in self._options.scorers if w and p.applies(job, state)]

    def place(
        self,
        job: Job,
        *,
        limits: Mapping[str, Mapping[str, int]] | None = None,
        prefer: Sequence[str] = (),
    ) -> PlaceResult:
        """Grant every task of ``job`` on the state, or nothing.

        ``limits`` caps what may be used per node (node -> resource ->
        amount; backfill uses it to keep a reservation's capacity).
        ``prefer`` lists nodes to fill first, in order (a reservation takes
        the capacity running jobs free before idle nodes). The grants are
        made inside the caller's transaction if one is open; the caller
        registers the running job.
        """
        if job.task_count == 1 and not limits and not prefer:
            one = self._place_one(job)
            return PlaceResult(None, one) if isinstance(one, Failure) else PlaceResult(one)
        state = self.state
        # A working copy: each task placed on a limited node spends its limit.
        work = {n: dict(v) for n, v in limits.items()} if limits else None
        self._limits = work
        limits = work
        # One task is granted whole or not at all: nothing to roll back, and
        # its one grant counts as the change a commit would count.
        mark = state.mark() if job.task_count > 1 else -1
        placed: list[TaskPlacement] = []
        # Plugins that have nothing to say about this job (affinity without
        # terms, topology for one task) are dropped once, not per candidate.
        ctx = PlaceContext(job, job.tasks[0], state, {}, 0, self._scorers(job))
        order = (range(1) if len(job.tasks) == 1 else
                 sorted(range(len(job.tasks)), key=lambda i: hardness(job.tasks[i], state)))
        for i in order:
            spec = job.tasks[i]
            ctx.spec = spec
            failure = self._place_group(job, i, spec, ctx, placed, limits, prefer)
            if failure is not None:
                if mark >= 0:
                    state.rollback(mark)
                return PlaceResult(None, failure)
        if mark >= 0:
            state.commit(mark)
        return PlaceResult(tuple(placed))

    def attempt(
        self,
        job: Job,
        limits: Mapping[str, Mapping[str, int]] | None = None,
        prefer: Sequence[str] = (),
    ) -> tuple[TaskPlacement, ...] | Failure:
        """``place``'s tasks, or its failure: the cycle's call, which makes
        no ``PlaceResult`` for a one-task job (one object a placement)."""
        if job.task_count == 1 and not limits and not prefer:
            return self._place_one(job)
        result = self.place(job, limits=limits, prefer=prefer)
        if result.tasks is not None:
            return result.tasks
        assert result.failure is not None
        return result.failure

    def _place_one(self, job: Job) -> tuple[TaskPlacement, ...] | Failure:
        """``place`` for one task without limits or preferred nodes (every
        job of the placements benchmark): ``_place_group``'s stages for one
        task, once, without the transaction mark, the group order, the
        placed list and a second class verdict; ``lone.take_lone`` first
        where it applies. ``tests/core/test_sched_place_one.py`` holds it
        to the general path."""
        self._limits = None
        state = self.state
        spec = job.tasks[0]
        # ``class_verdict``'s cache hit and ``group_aggregate_short``'s
        # check inline: two calls a placement.
        hit = state.cache.get((job.shape_hash, 0))
        verdict = (hit[1] if hit is not None and (hit[0] is job.shape or hit[0] == job.shape)
                   else class_verdict(state, job, 0))
        if not verdict.aligned:
            return no_class_failure(verdict, spec)
        free = state.free_totals
        for r, q in spec.resources.items():
            if free.get(r, 0) < q:  # one task: ``count`` is 1
                short = group_aggregate_short(state, spec)
                if short is not None:  # the same sums, read through a call
                    return short
                break  # cannot be: the general path below answers
        options = self._options
        plain = self._plain if not job.affinity and not job.anti_affinity else None
        if (options.first_is_best and verdict.lone and not verdict.per_node
                and (plain is not None or not scored_per_node(options, job, state))):
            lone = take_lone(state, job, spec, verdict)  # None: nothing granted
            if lone is not None:
                return (lone,)
        scorers: Sequence[tuple[ScorePlugin, float]]
        if plain is not None:
            scorers, codes = plain
            per_node = verdict.per_node
        else:
            scorers = self._scorers(job)
            per_node = self._per_node(job, verdict, scorers)
            codes = native_codes(scorers)
        if (pick is not None and codes is not None and not per_node
                and not verdict.device_check and not verdict.mask & state.inexact):
            # Buckets only, ranked by plugins the compiled walk scores: the
            # walk, the ranking and (no devices) the grant in one C call.
            picked = pick(state, spec, verdict, options.loose, options.limit,
                          options.first_is_best, codes, job.id, _need_past)
            if picked is not False:
                if picked is None:
                    return busy_failure(state, job, spec, 1)
                rec, aligned, granted = picked
                placed = (_new_task(rec.name, spec.resources, {}, 1) if granted
                          else self._grant_one(job, spec, rec, aligned))
                if placed is not None:
                    return (placed,)
                return busy_failure(state, job, spec, 1)
        ctx = PlaceContext(job, spec, state, {}, 0, scorers)
        cands = self._walk(job, spec, verdict, 1, None, None, per_node)
        if cands:
            placed = self._take_one(job, spec, self._best(cands, ctx))
            if placed is not None:
                return (placed,)
        return busy_failure(state, job, spec, 1)

    def _pick(self, spec: TaskSpec, verdict: Verdict, scorers: Sequence[tuple[ScorePlugin, float]]
              ) -> tuple[NodeRec, tuple[int, ...]] | Literal[False] | None:
        """The node and request ``_walk``, ``_best`` and ``_take_one`` choose
        for one task where no node is a candidate on its own
        (``fastindex.pick``, in C, without its grant), None where nothing
        fits, or False where the C code cannot tell (a plugin it does not
        score, amounts past exact doubles): walk in Python then."""
        assert pick is not None
        codes = native_codes(scorers)
        if codes is None:
            return False
        options = self._options
        picked = pick(self.state, spec, verdict, options.loose, options.limit,
                      options.first_is_best, codes, None, _need_past)
        return picked if not picked else picked[:2]

    def fits_now(self, job: Job) -> bool:
        """Whether a job of one task would be placed now, without placing it
        (the walk finds a candidate exactly when ``place`` succeeds)."""
        assert job.task_count == 1
        state = self.state
        spec = job.tasks[0]
        verdict = class_verdict(state, job, 0)
        if not verdict.aligned or group_aggregate_short(state, spec) is not None:
            return False
        ctx = PlaceContext(job, spec, state, {}, 0, self._scorers(job))
        return bool(self._walk(job, spec, verdict, 1, None, None,
                               self._per_node(job, verdict, ctx.scorers)))

    def fits_on(self, job: Job, name: str) -> bool:
        """Whether the first task of ``job`` fits on node ``name`` now."""
        rec = self.state.nodes.get(name)
        if rec is None or rec.bucket is None:
            return False
        verdict = class_verdict(self.state, job, 0)
        if rec.cls.id not in verdict.aligned:
            return False
        return self._node_candidate(job, job.tasks[0], rec, verdict, None) is not None

    # -- one task group -------------------------------------------------------

    def _place_group(
        self,
        job: Job,
        index: int,
        spec: TaskSpec,
        ctx: PlaceContext,
        placed: list[TaskPlacement],
        limits: Mapping[str, Mapping[str, int]] | None,
        prefer: Sequence[str],
    ) -> Failure | None:
        state = self.state
        verdict = class_verdict(state, job, index)
        if not verdict.aligned:
            return no_class_failure(verdict, spec)
        short = group_aggregate_short(state, spec)
        if short is not None:
            return short
        remaining = spec.count
        if prefer:
            remaining = self._fill_preferred(job, spec, verdict, ctx, placed, limits, prefer,
                                             remaining)
        per_node = self._per_node(job, verdict, ctx.scorers)
        while remaining:
            # Limited nodes change buckets as they take tasks: find them anew.
            capped = limits_by_bucket(state, limits) if limits else None
            cands = self._walk(job, spec, verdict, remaining, capped, limits, per_node)
            if not cands:
                return busy_failure(state, job, spec, remaining)
            best = self._best(cands, ctx)
            taken = self._take(job, spec, best, remaining, ctx, placed)
            if not taken:
                # The filters promised more than the devices gave (a node's
                # free share slots spread over GPUs): walking again would
                # find the same candidate forever.
                return busy_failure(state, job, spec, remaining)
            remaining -= taken
        return None

    @staticmethod
    def _per_node(job: Job, verdict: Verdict, scorers: Sequence[tuple[ScorePlugin, float]]
                  ) -> bool:
        if verdict.per_node:
            return True
        for p, _ in scorers:  # noqa: SIM110 (a loop: any() over a generator costs more)
            if p.per_node(job):
                return True
        return False

    def _fill_preferred(
        self,
        job: Job,
        spec: TaskSpec,
        verdict: Verdict,
        ctx: PlaceContext,
        placed: list[TaskPlacement],
        limits: Mapping[str, Mapping[str, int]] | None,
        prefer: Sequence[str],
        remaining: int,
    ) -> int:
        recs = self.state.nodes
        for name in prefer:
            rec = recs.get(name)
            if rec is None or rec.bucket is None or rec.cls.id not in verdict.aligned:
                continue
            cand = self._node_candidate(job, spec, rec, verdict, limits)
            if cand is not None:
                remaining -= self._take(job, spec, cand, remaining, ctx, placed)
                if not remaining:
                    break
        return remaining

    # -- the walk -------------------------------------------------------------

    def _walk(
        self,
        job: Job,
        spec: TaskSpec,
        verdict: Verdict,
        remaining: int,
        capped: dict[int, list[NodeRec]] | None,
        limits: Mapping[str, Mapping[str, int]] | None,
        per_node: bool,
    ) -> list[Candidate]:
        state = self.state
        index, k0, i0, walked = walk_index(state, spec)
        if index is None:
            return []
        limit = self._options.limit
        aligned_of = verdict.aligned
        # Every entry from the start holds enough of the walked resource:
        # only the others (``need``) can rule a block or an entry out.
        need_of, walked_of, need, first_of = _need_past(state, verdict, walked, spec)
        buckets = state.bucket_map
        cands: list[Candidate] = []
        seen = 0
        check_devices = verdict.device_check
        # One feasible class of one resource, offered in buckets, under
        # plugins that rank its buckets by walk order: the first is the pick
        # (``_pick`` passes the same rule to ``pick``; inline in both: as a
        # helper it cost 32 M instructions in 20,000 placements, +1.0 %).
        first = self._options.first_is_best and verdict.lone and not per_node and not capped
        # The index skips blocks and entries that cannot hold a task
        # (``FreeIndex.fitting``); here each bucket it keeps becomes a
        # candidate, or its nodes do where they differ in a way the bucket
        # does not show.
        for entry, fit in index.fitting(k0, i0, self._options.loose, verdict.mask, need,
                                        first_of, need_of, walked_of):
            cid = entry[1]
            bucket = buckets[entry[3]]
            aligned = aligned_of[cid]
            if per_node or cid in check_devices or (capped and bucket.id in capped):
                for cand in self._bucket_nodes(job, spec, bucket, aligned, verdict, capped,
                                               limits, per_node):
                    cands.append(cand)
                    seen += cand.fit * cand.count
                    if len(cands) >= limit and seen >= remaining:
                        return cands
                continue
            cands.append(Candidate(bucket.cls, entry[2], aligned, fit, bucket, None,
                                   len(bucket.nodes)))
            seen += fit * len(bucket.nodes)
            if first or (len(cands) >= limit and seen >= remaining):
                return cands
        return cands

    def _bucket_nodes(
        self,
        job: Job,
        spec: TaskSpec,
        bucket: Bucket,
        aligned: tuple[int, ...],
        verdict: Verdict,
        capped: dict[int, list[NodeRec]] | None,
        limits: Mapping[str, Mapping[str, int]] | None,
        per_node: bool,
    ) -> list[Candidate]:
        """Single-node candidates from a bucket whose nodes differ in a way the
        bucket does not show (devices, jobs, backfill limits)."""
        special = {r.name for r in capped.get(bucket.id, ())} if capped else set()
        out: list[Candidate] = []
        if not per_node and bucket.cls.id not in verdict.device_check:
            # Only the limited nodes differ: offer them one by one and the
            # rest of the bucket as one candidate.
            for rec in capped[bucket.id] if capped else ():
                cand = self._node_candidate(job, spec, rec, verdict, limits)
                if cand is not None:
                    out.append(cand)
            rest = len(bucket.nodes) - len(special)
            if rest > 0:
                out.append(Candidate(bucket.cls, bucket.free, aligned,
                                     fit_count(bucket.free, aligned), bucket, None, rest,
                                     special))
            return out
        recs = self.state.nodes
        for name in bucket.nodes:
            cand = self._node_candidate(job, spec, recs[name], verdict, limits)
            if cand is not None:
                out.append(cand)
                if len(out) >= self._options.limit:
                    break
        return out

    def _node_candidate(
        self,
        job: Job,
        spec: TaskSpec,
        rec: NodeRec,
        verdict: Verdict,
        limits: Mapping[str, Mapping[str, int]] | None,
    ) -> Candidate | None:
        aligned = verdict.aligned[rec.cls.id]
        free = rec.free
        if limits:
            lim = limits.get(rec.name)
            if lim:
                free = tuple(
                    min(f, lim.get(r, f)) for r, f in zip(rec.cls.resources, free, strict=True)
                )
        fit = _UNBOUNDED
        state = self.state
        for plugin in verdict.node_filters:
            fit = plugin.fit(job, spec, rec, free, state, fit)
            # Below zero where a backfill limit is overdrawn (EASY charges
            # every backfilled job to the head's nodes): no room, as at zero.
            if fit <= 0:
                return None
        return Candidate(rec.cls, free, aligned, fit, None, rec, 1)

    # -- ranking and granting ---------------------------------------------------

    def _best(self, cands: list[Candidate], ctx: PlaceContext) -> Candidate:
        scorers = ctx.scorers
        if len(cands) == 1 or not scorers:
            return cands[0]
        best = cands[0]
        best_score = -1.0
        for cand in cands:
            total = 0.0
            for plugin, weight in scorers:
                total += weight * plugin.score(cand, ctx)
            cand.score = total
            if total > best_score:
                best, best_score = cand, total
        return best

    def _take(
        self,
        job: Job,
        spec: TaskSpec,
        cand: Candidate,
        remaining: int,
        ctx: PlaceContext,
        placed: list[TaskPlacement],
    ) -> int:
        per_node = min(cand.fit, remaining) if self._options.pack else 1
        n_nodes = min(cand.count, -(-remaining // per_node))
        state = self.state
        recs = state.nodes
        devices = cand.cls.devices
        device_res = [r for r in spec.resources if r in devices] if devices else []
        if not device_res and cand.rec is None and n_nodes > 1:
            return self._take_bulk(job, spec, cand, remaining, per_node, n_nodes, ctx, placed)
        taken = 0
        for name in cand.node_names(n_nodes):
            rec = recs[name]
            n = min(per_node, remaining - taken)
            if device_res:
                n = self._take_devices(job, spec, rec, cand.aligned, n, device_res, placed)
            else:
                state.grant(rec, cand.aligned, n, job.id)
                if self._limits:
                    self._spend(rec, cand.aligned, n)
                placed.append(TaskPlacement(name, spec.resources, {}, n))
            taken += n
            if job.task_count > 1:  # only the topology score reads it, for later tasks
                _note_zone(ctx, rec, n)
            if taken == remaining:
                break
        return taken

    def _take_one(self, job: Job, spec: TaskSpec, cand: Candidate) -> TaskPlacement | None:
        """``_take`` of one task (no limits to spend, no zones to note), or
        None where the devices fell short."""
        rec = cand.rec
        if rec is None:
            # A bucket's first node by name (``node_names``: nothing is
            # excluded without backfill limits).
            assert cand.bucket is not None and not cand.exclude
            rec = self.state.nodes[cand.bucket.nodes[0]]
        return self._grant_one(job, spec, rec, cand.aligned)

    def _grant_one(self, job: Job, spec: TaskSpec, rec: NodeRec, aligned: tuple[int, ...]
                   ) -> TaskPlacement | None:
        devices = rec.cls.devices
        device_res = [r for r in spec.resources if r in devices] if devices else None
        if device_res:
            placed: list[TaskPlacement] = []
            self._take_devices(job, spec, rec, aligned, 1, device_res, placed)
            return placed[0] if placed else None
        self.state.grant(rec, aligned, 1, job.id)
        return TaskPlacement(rec.name, spec.resources, {}, 1)

    def _take_bulk(
        self,
        job: Job,
        spec: TaskSpec,
        cand: Candidate,
        remaining: int,
        per_node: int,
        n_nodes: int,
        ctx: PlaceContext,
        placed: list[TaskPlacement],
    ) -> int:
        """Fill ``n_nodes`` identical nodes of a bucket in one state move (the
        last may take fewer tasks)."""
        recs = self.state.nodes
        chosen = [recs[name] for name in cand.node_names(n_nodes)]
        full = min(len(chosen), remaining // per_node)
        rest = min(per_node, remaining - full * per_node) if full < len(chosen) else 0
        if full:
            self.state.bulk(chosen[:full], cand.aligned, per_node, job.id, 1)
            placed.extend(TaskPlacement(r.name, spec.resources, {}, per_node)
                          for r in chosen[:full])
        if rest:
            last = chosen[full]
            self.state.grant(last, cand.aligned, rest, job.id)
            placed.append(TaskPlacement(last.name, spec.resources, {}, rest))
        taken = full * per_node + rest
        _note_zone(ctx, chosen[0], taken)
        return taken

    def _take_devices(
        self,
        job: Job,
        spec: TaskSpec,
        rec: NodeRec,
        aligned: tuple[int, ...],
        n: int,
        device_res: list[str],
        placed: list[TaskPlacement],
    ) -> int:
        constraints = job.constraints
        # One task at a time: each task holds its own devices (for pinning).
        for k in range(n):
            chosen: dict[str, tuple[str, ...]] = {}
            for r in device_res:
                terms = constraints.device_terms(family(r)) if constraints.devices else ()
                ids = dev.choose(rec, r, spec.resources[r], terms)
                if ids is None:
                    return k
                chosen[r] = ids
            self.state.grant(rec, aligned, 1, job.id, chosen)
            if self._limits:
                self._spend(rec, aligned, 1)
            placed.append(TaskPlacement(rec.name, spec.resources, chosen, 1))
        return n


def _note_zone(ctx: PlaceContext, rec: NodeRec, n: int) -> None:
    labels = rec.cls.labels
    key = (labels.get("facility", ""), labels.get("zone", ""))
    ctx.zones[key] = ctx.zones.get(key, 0) + n
    ctx.placed += n
