"""One task on the one node class that may take it, without the walk's
candidates: the placement a GPU trace asks for at nearly every job (one task
of one resource, on a fleet of one node type).

``Placer.place`` comes here when a job has one task, no backfill limits or
preferred nodes, a lone verdict (one feasible class, of a single resource,
no per-node device check), no per-node filter or score, and a strategy whose
walk takes its first bucket (``PlaceOptions.first_is_best``). For such a job
``Placer._walk`` goes up the resource's index from the first bucket with
enough of it, skipping blocks without the class (and tightening stale ones
it passes), and stops at the first bucket of the class; ``_take`` puts the
task on that bucket's first node by name, with the first free devices that
``devices.choose`` gives. ``take_lone`` does the same steps on the same
state, so it grants the same node and devices;
``tests/core/test_sched_lone.py`` holds it to the general path.
"""

from __future__ import annotations

from apportion.core.scheduling import devices as dev
from apportion.core.scheduling.constraints import family
from apportion.core.scheduling.filters import Verdict
from apportion.core.scheduling.interface import PlaceOptions
from apportion.core.scheduling.jobs import Job, TaskPlacement, TaskSpec
from apportion.core.scheduling.state import ClusterState


def take_lone(state: ClusterState, job: Job, spec: TaskSpec, verdict: Verdict
              ) -> TaskPlacement | None:
    """Grant ``job``'s one task where the walk would, or None with nothing
    granted (no bucket has room, or its first node lacks matching devices):
    the general path then says why."""
    [(r, q)] = spec.resources.items()
    index = state.index(r)
    if index is None:
        return None
    [(cid, aligned)] = verdict.aligned.items()
    bit = verdict.mask
    blocks, masks, stale = index.blocks, index.masks, index.stale
    k0, i = index.bisect(q)
    for k in range(k0, len(blocks)):
        if masks[k] & bit and stale[k]:
            index.recompute(k)  # as the walk does with a block it may enter
        if masks[k] & bit:
            block = blocks[k]
            # Every entry from the bisect on has enough of r: the first of
            # the class is the walk's pick.
            for j in range(i if k == k0 else 0, len(block)):
                entry = block[j]
                if entry[1] == cid:
                    return _grant(state, job, spec, entry[3], aligned)
    return None


def _grant(state: ClusterState, job: Job, spec: TaskSpec, bucket_id: int,
           aligned: tuple[int, ...]) -> TaskPlacement | None:
    bucket = state.bucket_map[bucket_id]
    name = bucket.nodes[0]
    rec = state.nodes[name]
    devices = bucket.cls.devices
    chosen: dict[str, tuple[str, ...]] = {}
    for r in spec.resources:
        if r in devices:
            constraints = job.constraints
            terms = constraints.device_terms(family(r)) if constraints.devices else ()
            ids = dev.choose(rec, r, spec.resources[r], terms)
            if ids is None:
                return None
            chosen[r] = ids
    state.grant(rec, aligned, 1, job.id, chosen or None)
    return TaskPlacement(name, spec.resources, chosen, 1)


def scored_per_node(options: PlaceOptions, job: Job, state: ClusterState) -> bool:
    """Whether a score plugin that applies to ``job`` tells the nodes of a
    bucket apart: ``Placer._per_node`` over ``Placer._scorers``, without
    building the list (the plugins' answers are pure)."""
    for p, w in options.scorers:  # noqa: SIM110 (a loop: any() over a generator costs more)
        if w and p.per_node(job) and p.applies(job, state):
            return True
    return False
