"""Filter plugins: which nodes may take a task, and why the others may not.

A plugin answers at one level or both, as the Kubernetes framework's Filter
does per node, but split the way Nomad caches feasibility per computed class;
it implements the protocol of each level it has something to say at:

* ``ClassFilter.check_class``: facts that are the same for every node of a
  class (state, labels, capacity, device models). A job shape's verdict is
  cached per (job shape, class) until the set of classes changes; what no
  amount changes is learnt once per shape less its amounts (``classfacts``:
  ``amount_free`` filters, and ``fixed``/``judge`` pairs), so only the
  filters that read amounts (``ResourcesFit``) are asked per shape.
* ``NodeFilter``: facts about one node now (free capacity, free matching
  devices, which jobs it runs). The placement walk asks only about the
  nodes it visits, in index order, so it stops after a few feasible ones;
  it asks ``fit`` (how many tasks, no message to build) and explain asks
  ``check_node`` (the reason).
* ``RequestFilter.admits``: one node for a plain request, a resource vector
  granted through the ledger with no job (``POST /allocations``). The
  engine's best-fit walk (``engine.choose_node``) asks it of each node it
  visits, and a grant on a named node asks that node.

A rejection is a ``Reason`` (defined in ``status``, re-exported here)
naming the plugin, a code and a message with the amounts; ``kind`` keeps
"does not fit now" (``busy``: waiting helps) apart from "node condition"
(``condition``: not ready or unhealthy, an operator can change it) and "can
never fit" (``never``: capacity, labels, devices).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from apportion.core.labels import LabelRequirement
from apportion.core.model import Node
from apportion.core.reasons import Code, Kind, Reason
from apportion.core.resources import Vector, format_quantity
from apportion.core.scheduling.capacity import NodeClass, NodeRec
from apportion.core.scheduling.classfacts import class_facts, needs_node_device_check
from apportion.core.scheduling.constraints import (
    DeviceRequirement,
    family,
    labels_match,
)
from apportion.core.scheduling.devices import matching_free, share_slots, tasks_held
from apportion.core.scheduling.jobs import Job, TaskSpec
from apportion.core.scheduling.state import ClusterState

__all__ = [
    "CLASS_FILTERS", "NODE_FILTERS", "REQUEST_FILTERS", "ClassFilter", "Code",
    "DeviceConstraints", "JobAffinity", "Kind", "LabelConstraints", "NodeAffinity", "NodeFilter",
    "NodeReady", "Reason", "RequestFilter", "ResourcesFit", "Verdict", "bound_verdicts",
    "class_verdict",
    "need_past", "needs_node_device_check", "node_reasons", "runs_matching",
]


class ClassFilter(Protocol):
    """A filter on what every node of a class shares (cached per job shape)."""

    name: str

    def check_class(self, job: Job, spec: TaskSpec, cls: NodeClass) -> Reason | None: ...


class NodeFilter(Protocol):
    """A filter on one node now. Besides the reason (for explain), it gives
    the placement walk a fast answer: how many tasks the node can take."""

    name: str

    def needed(self, job: Job) -> bool:
        """Whether this filter can reject any node for ``job``: the walk
        skips filters that cannot, once per job, not once per node."""
        ...

    def per_node(self, job: Job) -> bool:
        """True when the answer differs between nodes of one bucket (jobs
        they run), so the walk must offer single nodes, not buckets."""
        ...

    def fit(
        self, job: Job, spec: TaskSpec, rec: NodeRec, free: Sequence[int], state: ClusterState,
        fit: int,
    ) -> int:
        """How many of the ``fit`` tasks the free vector allows ``rec`` can
        take by this filter's measure (0: none)."""
        ...

    def check_node(
        self, job: Job, spec: TaskSpec, rec: NodeRec, free: Sequence[int], state: ClusterState
    ) -> Reason | None: ...


class RequestFilter(Protocol):
    """A filter on one node for a plain request (a resource vector, no job):
    the ledger's ``Node`` and free amounts, not a class and bucket, since a
    grant decides on the ledger's own index (``engine`` says why)."""

    name: str

    def admits(self, request: Vector, node: Node, free: Mapping[str, int]) -> bool: ...


class NodeReady:
    """Only ready, not unhealthy nodes take work. First: it is the cheapest
    test and says the most useful thing about a node that is down."""

    name = "NodeReady"
    amount_free = True  # ``classfacts``: asks ``check_class`` once per shape less amounts

    def admits(self, request: Vector, node: Node, free: Mapping[str, int]) -> bool:
        return node.schedulable

    def check_class(self, job: Job, spec: TaskSpec, cls: NodeClass) -> Reason | None:
        # String comparisons of the ``StrEnum`` members, not their
        # ``.value`` (an enum property: it ran for every class of every
        # job shape met, 10 % of the placements benchmark with the rest).
        if cls.state != "ready":
            return Reason(self.name, Code.NOT_READY, Kind.CONDITION,
                          f"node is {cls.state.value}")
        if cls.health == "unhealthy":
            return Reason(self.name, Code.UNHEALTHY, Kind.CONDITION, "node is unhealthy")
        return None


class ResourcesFit:
    """Capacity (class: can the node ever hold one task) and free amounts
    (node: can it now). The walk's index already guarantees the resource it
    walks; this plugin states the reason with amounts when one is short."""

    name = "ResourcesFit"

    def check_class(self, job: Job, spec: TaskSpec, cls: NodeClass) -> Reason | None:
        for r, q in spec.resources.items():
            i = cls.pos.get(r)
            if i is None:
                return Reason(self.name, Code.UNKNOWN_RESOURCE, Kind.NEVER,
                              f"node offers no {r}", r, q, 0)
            if cls.capacity[i] < q:
                return Reason(
                    self.name, Code.CAPACITY, Kind.NEVER,
                    f"{r}: node capacity {format_quantity(r, cls.capacity[i])} < "
                    f"{format_quantity(r, q)} requested",
                    r, q, cls.capacity[i],
                )
        return None

    def admits(self, request: Vector, node: Node, free: Mapping[str, int]) -> bool:
        # A plain loop: all() over a generator costs twice as much on this
        # hot path (every node the grant's walk visits).
        for r, q in request.items():  # noqa: SIM110
            if free.get(r, 0) < q:
                return False
        return True

    def needed(self, job: Job) -> bool:
        return True

    def per_node(self, job: Job) -> bool:
        return False

    def fit(
        self, job: Job, spec: TaskSpec, rec: NodeRec, free: Sequence[int], state: ClusterState,
        fit: int,
    ) -> int:
        pos = rec.cls.pos
        for r, q in spec.resources.items():
            n = free[pos[r]] // q
            if n < fit:
                if not n:
                    return 0
                fit = n
        return fit

    def check_node(
        self, job: Job, spec: TaskSpec, rec: NodeRec, free: Sequence[int], state: ClusterState
    ) -> Reason | None:
        pos = rec.cls.pos
        for r, q in spec.resources.items():
            have = free[pos[r]]
            if have < q:
                return Reason(
                    self.name, Code.INSUFFICIENT, Kind.BUSY,
                    f"insufficient {r}: {format_quantity(r, have)} free, "
                    f"{format_quantity(r, q)} requested",
                    r, q, have,
                )
        return None


class LabelConstraints:
    """The job's label expressions against the node's labels."""

    name = "LabelConstraints"
    amount_free = True

    def check_class(self, job: Job, spec: TaskSpec, cls: NodeClass) -> Reason | None:
        failed = labels_match(cls.labels, job.constraints.labels)
        if failed is not None:
            return Reason(self.name, Code.LABEL, Kind.NEVER, f"label mismatch: {failed}")
        return None


class NodeAffinity:
    """Required node affinity and anti-affinity (preferred ones only score)."""

    name = "NodeAffinity"
    amount_free = True

    def check_class(self, job: Job, spec: TaskSpec, cls: NodeClass) -> Reason | None:
        for a in job.affinity:
            if a.required and a.target == "node" and labels_match(cls.labels, a.selector):
                return Reason(self.name, Code.AFFINITY, Kind.NEVER,
                              f"affinity not met: {_sel(a.selector)}")
        for a in job.anti_affinity:
            if a.required and a.target == "node" and labels_match(cls.labels, a.selector) is None:
                return Reason(self.name, Code.ANTI_AFFINITY, Kind.NEVER,
                              f"anti-affinity: node matches {_sel(a.selector)}")
        return None


def _sel(selector: tuple[LabelRequirement, ...]) -> str:
    return ",".join(str(r) for r in selector)


class DeviceConstraints:
    """Device terms (``gpu.model in (A100,H100)``, ``gpu.memory>=40Gi``): the
    class must have enough matching devices; the node must have enough of
    them free. Nodes that list no devices are judged by their labels."""

    name = "DeviceConstraints"

    def check_class(self, job: Job, spec: TaskSpec, cls: NodeClass) -> Reason | None:
        return self.judge(spec, cls, self.fixed(job, spec, cls))

    def fixed(self, job: Job, spec: TaskSpec, cls: NodeClass
              ) -> tuple[tuple[str, tuple[DeviceRequirement, ...], int], ...] | None:
        """``check_class``'s part that reads no amount (``classfacts``): per
        requested resource with device terms, the class's devices matching
        them all, or -1 where it lists none and a label term fails; None
        where no amount can fail."""
        if not job.constraints.devices:
            return None  # no device terms for any resource (most jobs)
        out = []
        for r in spec.resources:
            terms = job.constraints.device_terms(family(r))
            if not terms:
                continue
            devices = cls.devices.get(r)
            if devices is None:
                if any(not t.matches(cls.labels.get(f"{t.family}.{t.attr}")) for t in terms):
                    out.append((r, terms, -1))
                continue
            good = sum(1 for d in devices if all(t.matches_device(d) for t in terms))
            out.append((r, terms, good))
        return tuple(out) or None

    def judge(self, spec: TaskSpec, cls: NodeClass,
              fixed: tuple[tuple[str, tuple[DeviceRequirement, ...], int], ...] | None
              ) -> Reason | None:
        for r, terms, good in fixed or ():
            q = spec.resources[r]
            if good < 0:
                labels = cls.labels
                bad = next(t for t in terms if not t.matches(labels.get(f"{t.family}.{t.attr}")))
                return Reason(self.name, Code.DEVICE, Kind.NEVER,
                              f"device {r} does not match {bad}", r, q, 0)
            if good < q:
                return Reason(
                    self.name, Code.DEVICE, Kind.NEVER,
                    f"needs {q} {r} with {_terms(terms)}; node has {good}", r, q, good,
                )
        return None

    def needed(self, job: Job) -> bool:
        # Device terms need it, and so do GPU share slots: free slots spread
        # over GPUs are fewer tasks than their count says (a task's shares
        # sit on one GPU). Whether a resource is share slots is the nodes'
        # to say (``devices.share_slots``), not the job's: ``class_verdict``
        # keeps this filter only where a feasible class needs a node's
        # devices checked (``needs_node_device_check``).
        return True

    def per_node(self, job: Job) -> bool:
        # Nodes of a bucket may hold different devices: the walk offers them
        # one by one for the classes that need it (``Verdict.device_check``).
        return False

    def fit(
        self, job: Job, spec: TaskSpec, rec: NodeRec, free: Sequence[int], state: ClusterState,
        fit: int,
    ) -> int:
        for r, q in spec.resources.items():
            if r in rec.devices:
                terms = job.constraints.device_terms(family(r))
                if terms or share_slots(rec.devices[r].values()):
                    n = _fit_devices(rec, r, terms, q)
                    if n < fit:
                        if not n:
                            return 0
                        fit = n
        return fit

    def check_node(
        self, job: Job, spec: TaskSpec, rec: NodeRec, free: Sequence[int], state: ClusterState
    ) -> Reason | None:
        for r, q in spec.resources.items():
            terms = job.constraints.device_terms(family(r))
            if r not in rec.devices or not (terms or share_slots(rec.devices[r].values())):
                continue
            good = len(matching_free(rec, r, terms))
            if good < q:
                return Reason(
                    self.name, Code.DEVICE, Kind.BUSY,
                    f"needs {q} free {r}{_with(terms)}; {good} free", r, q, good,
                )
            if not _fit_devices(rec, r, terms, q):
                return Reason(
                    self.name, Code.DEVICE, Kind.BUSY,
                    f"needs {q} free {r}{_with(terms)} on one GPU; {good} free, "
                    "spread over GPUs", r, q, good,
                )
        return None


def _fit_devices(rec: NodeRec, resource: str, terms: Sequence[DeviceRequirement], q: int) -> int:
    """Tasks of ``q`` matching devices the node's free ones hold; GPU share
    slots count per GPU, as a task's shares sit on one GPU."""
    return tasks_held(matching_free(rec, resource, terms), rec.devices[resource], q)


def _terms(terms: Sequence[object]) -> str:
    return ",".join(str(t) for t in terms)


def _with(terms: Sequence[object]) -> str:
    # GPU share slots are checked here without terms too: no empty "with".
    return f" with {_terms(terms)}" if terms else ""


class JobAffinity:
    """Required affinity/anti-affinity to other jobs: depends on what runs on
    the node now, so it is a node check (and comes after the class checks,
    which are cached and cheaper)."""

    name = "JobAffinity"

    def needed(self, job: Job) -> bool:
        return any(a.required and a.target == "job" for a in (*job.affinity, *job.anti_affinity))

    per_node = needed

    def fit(
        self, job: Job, spec: TaskSpec, rec: NodeRec, free: Sequence[int], state: ClusterState,
        fit: int,
    ) -> int:
        return 0 if self.check_node(job, spec, rec, free, state) is not None else fit

    def check_node(
        self, job: Job, spec: TaskSpec, rec: NodeRec, free: Sequence[int], state: ClusterState
    ) -> Reason | None:
        for a in job.anti_affinity:
            if a.required and a.target == "job" and runs_matching(rec, a.selector, state, job.id):
                return Reason(self.name, Code.ANTI_AFFINITY, Kind.BUSY,
                              f"anti-affinity: node runs a job with {_sel(a.selector)}")
        for a in job.affinity:
            if a.required and a.target == "job" and not runs_matching(
                rec, a.selector, state, job.id
            ):
                return Reason(self.name, Code.AFFINITY, Kind.BUSY,
                              f"affinity: node runs no job with {_sel(a.selector)}")
        return None


def partner_missing(job: Job, state: ClusterState) -> Reason | None:
    """Why ``job`` waits, if a required affinity to other jobs is met by no
    running job on any node: it then waits for another job to start, not
    for capacity."""
    for a in job.affinity:
        if a.required and a.target == "job" and not any(
            rj.job.id != job.id and labels_match(rj.job.job_labels, a.selector) is None
            for rj in state.running.values()
        ):
            return Reason(JobAffinity.name, Code.AFFINITY, Kind.BUSY,
                          f"waiting for a job with {_sel(a.selector)} to run (required affinity)")
    return None


def runs_matching(
    rec: NodeRec, selector: tuple[LabelRequirement, ...], state: ClusterState, self_id: str
) -> bool:
    running = state.running
    for job_id in rec.jobs:
        rj = running.get(job_id)
        if job_id == self_id or rj is None:
            continue
        if labels_match(rj.job.job_labels, selector) is None:
            return True
    return False


CLASS_FILTERS: tuple[ClassFilter, ...] = (
    NodeReady(), ResourcesFit(), LabelConstraints(), NodeAffinity(), DeviceConstraints(),
)
"""Class-level order: cheapest and most telling first; a class is reported by
the first plugin that rejects it."""

NODE_FILTERS: tuple[NodeFilter, ...] = (ResourcesFit(), DeviceConstraints(), JobAffinity())
"""Node-level order: free amounts first (the index already narrowed them),
then devices and jobs, which need a look inside the node. The placement walk
runs the ones a job shape needs (``Verdict.node_filters``) on every node it
offers alone; on a bucket, the walk's test of the index entry is
``ResourcesFit``'s, laid out as the class vector so that whole index blocks
can be skipped."""


REQUEST_FILTERS: tuple[RequestFilter, ...] = (NodeReady(), ResourcesFit())
"""What a plain request asks of a node: ready and healthy enough, and the
free amounts (a grant has no labels, device terms or affinity to check; the
devices it takes are the first free ones, counted by its amounts)."""


NeedPast = tuple[dict[int, tuple[tuple[int, int], ...]], dict[int, tuple[int, int]],
                 tuple[tuple[str, int], ...], dict[int, tuple[int, int]]]
"""``Verdict.need_past`` for one walked resource."""


@dataclass(slots=True)
class Verdict:
    """Class-level answer for one task spec of one job shape."""

    aligned: dict[int, tuple[int, ...]] = field(default_factory=dict)
    """Feasible class id -> the request laid out as that class's vector."""
    device_check: set[int] = field(default_factory=set)
    """Feasible classes whose devices do not all match: check free ones per node."""
    rejected: list[tuple[NodeClass, Reason]] = field(default_factory=list)
    nodes_ok: int = 0
    mask: int = 0
    """The feasible classes' bits (``NodeClass.bit``): index blocks holding
    none of them are skipped."""
    need: dict[int, tuple[tuple[int, int], ...]] = field(default_factory=dict)
    """Feasible class id -> (position, amount) of each requested resource in
    the class's vector: the walk's first test of a bucket."""
    need_past: dict[str, NeedPast] = field(default_factory=dict)
    """Per walked resource (filled by ``framework.Placer._walk``): ``need``
    without that resource, its (position, amount) per class, the other
    requested resources with their amounts, and per class the first other
    requested (position, amount), or the walked one where there is none.
    Every entry the walk meets has enough of the resource it walks, so only
    the others can turn a bucket or a block down."""
    node_filters: tuple[NodeFilter, ...] = ()
    """The node filters this job shape needs, in ``NODE_FILTERS`` order."""
    per_node: bool = False
    """Whether one of ``node_filters`` tells nodes of a bucket apart for this
    shape (required job affinity is part of the shape, so it is asked once)."""
    lone: bool = False
    """One feasible class, of a single resource, whose nodes need no device
    check: its buckets differ in one free amount only (``Placer._walk``)."""


def class_verdict(state: ClusterState, job: Job, index: int) -> Verdict:
    """Which classes can ever take task spec ``index`` of ``job`` (cached by
    job shape until the set of node classes changes, or ``bound_verdicts``
    drops it)."""
    key = (job.shape_hash, index)
    hit = state.cache.get(key)
    if hit is not None and (hit[0] is job.shape or hit[0] == job.shape):
        verdict: Verdict = hit[1]
        return verdict
    spec = job.tasks[index]
    verdict = Verdict(node_filters=tuple(f for f in NODE_FILTERS if f.needed(job)))
    # The amount-free answers are learnt once per shape less its amounts;
    # only the filters that read amounts run here (``classfacts``).
    for cls, steps, fixed_reason, device_check in class_facts(state, job, spec, CLASS_FILTERS):
        if cls.size == 0:
            continue
        reason = None
        for plugin, part in steps:
            reason = (plugin.check_class(job, spec, cls) if part is None
                      else plugin.judge(spec, cls, part))
            if reason is not None:
                break
        else:
            reason = fixed_reason
        if reason is not None:
            verdict.rejected.append((cls, reason))
            continue
        aligned = state.align(cls, spec.resources)
        assert aligned is not None
        verdict.aligned[cls.id] = aligned
        verdict.need[cls.id] = tuple([(i, q) for i, q in enumerate(aligned) if q])
        verdict.mask |= cls.bit
        verdict.nodes_ok += cls.size
        if device_check:
            verdict.device_check.add(cls.id)
    if not verdict.device_check:
        # Every feasible class's devices all match: free matching devices are
        # the free amount, which ResourcesFit already counts.
        verdict.node_filters = tuple(
            f for f in verdict.node_filters if not isinstance(f, DeviceConstraints)
        )
    verdict.per_node = any(f.per_node(job) for f in verdict.node_filters)
    verdict.lone = (len(verdict.aligned) == 1 and not verdict.device_check
                    and all(len(a) == 1 for a in verdict.aligned.values()))
    state.cache[key] = (job.shape, verdict)
    return verdict


_SPARE = 1024
"""Verdicts kept beyond twice the pending jobs (or twice those kept at the
last sweep) before ``bound_verdicts`` sweeps: a queue of fewer shapes than
this, the common case, never loses one."""

_KEPT = "verdicts-kept"


def bound_verdicts(state: ClusterState, pending: Sequence[Job]) -> None:
    """Keep ``class_verdict``'s entries in ``state.cache`` from growing
    without bound in a state that lives for many cycles (the leader's, the
    simulator's): past a bound, drop those of shapes no ``pending`` job has.

    A verdict depends only on its shape and the node classes, so a dropped
    one is made again, the same, if its shape comes back. The bound is set
    from what the last sweep kept, so a queue of many shapes is swept once
    per ``_SPARE`` new entries, not every cycle. Other entries (shape keys,
    which bound themselves; the EASY reservation; the cost range) stay."""
    cache = state.cache
    if len(cache) <= 2 * max(len(pending), cache.get(_KEPT, 0)) + _SPARE:
        return
    keep = {(job.shape_hash, i) for job in pending for i in range(len(job.tasks))}
    for key in [k for k, v in cache.items() if _is_verdict(v) and k not in keep]:
        del cache[key]
    cache[_KEPT] = len(cache)


def _is_verdict(entry: object) -> bool:
    return type(entry) is tuple and len(entry) == 2 and isinstance(entry[1], Verdict)


def node_reasons(
    state: ClusterState, job: Job, spec: TaskSpec, rec: NodeRec, free: Sequence[int] | None = None
) -> Reason | None:
    """The first reason any plugin gives against ``rec`` for one task (for
    explain; the placement walk asks the same plugins for counts instead)."""
    for plugin in CLASS_FILTERS:
        reason = plugin.check_class(job, spec, rec.cls)
        if reason is not None:
            return reason
    current = rec.free if free is None else free
    for node_filter in NODE_FILTERS:
        reason = node_filter.check_node(job, spec, rec, current, state)
        if reason is not None:
            return reason
    return None


def need_past(state: ClusterState, verdict: Verdict, walked: str, spec: TaskSpec) -> NeedPast:
    """``verdict.need`` split into the walked resource and the others
    (``Verdict.need_past``), made once per walked resource."""
    split = verdict.need_past.get(walked)
    if split is not None:
        return split
    others: dict[int, tuple[tuple[int, int], ...]] = {}
    walked_of: dict[int, tuple[int, int]] = {}
    first_of: dict[int, tuple[int, int]] = {}
    class_by_id = state.class_by_id
    # Plain loops, not generators: it runs for every feasible class (over a
    # hundred on the benchmark's fleet) of every job shape.
    for cid, pos in verdict.need.items():
        j = class_by_id(cid).pos[walked]
        kept = []
        mine = None
        for p in pos:
            if p[0] != j:
                kept.append(p)
            elif mine is None:
                mine = p
        # The walked resource is requested, so its position is in ``need``.
        assert mine is not None
        others[cid] = tuple(kept)
        walked_of[cid] = mine
        first_of[cid] = kept[0] if kept else mine
    # (Every spec of one job shape asks for the same amounts; the order of
    # the block tests does not change which blocks pass them.)
    rest = tuple((r, q) for r, q in spec.resources.items() if r != walked)
    split = verdict.need_past[walked] = (others, walked_of, rest, first_of)
    return split
