"""Explain per node: for each node, why it cannot take a job now and whether
it ever could.

``explain`` counts nodes by reason; an operator with a handful of odd nodes
wants the names. A cluster may have ten thousand nodes, so the table shows
the first ``limit`` (those that could take the job soonest first) and only
counts the rest by reason, as ``kubectl describe`` does with its events.

"Ever" asks the class filters other than ``NodeReady``: a cordoned or down
node can be brought back by an operator, a node too small for the task or
without the label the job asks for cannot.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from apportion.core.scheduling.capacity import NodeClass
from apportion.core.scheduling.filters import CLASS_FILTERS, NodeReady, Reason, node_reasons
from apportion.core.scheduling.jobs import Job, TaskSpec
from apportion.core.scheduling.state import ClusterState

NODES_SHOWN = 50

# Nodes that could take the job now come first, then those that only wait
# for capacity, then those an operator could bring back, then the hopeless.
_ORDER = {"fits": 0, "busy": 1, "condition": 2, "never": 3}


@dataclass(frozen=True, slots=True)
class NodeVerdict:
    node: str
    now: str
    """``fits``, or the kind of the first reason: ``busy``, ``condition``, ``never``."""
    reason: Reason | None
    """The first reason against the node now (None: it fits)."""
    never: Reason | None
    """Why the node could never take a task (None: it could, once free or ready)."""

    @property
    def ever(self) -> bool:
        return self.never is None


@dataclass(frozen=True, slots=True)
class NodeTable:
    nodes: tuple[NodeVerdict, ...]
    total: int
    rest: Mapping[str, int] = field(default_factory=dict)
    """Nodes past the limit, by reason group (``fits`` for those that fit)."""

    @property
    def more(self) -> int:
        return self.total - len(self.nodes)


def explain_nodes(state: ClusterState, job: Job, *, limit: int = NODES_SHOWN) -> NodeTable:
    """Every node's verdict on ``job`` (its largest task, as ``explain`` judges),
    the first ``limit`` in full, the rest counted by reason."""
    spec = max(job.tasks, key=lambda s: sum(s.resources.values()))
    verdicts = []
    for name, rec in state.nodes.items():
        reason = node_reasons(state, job, spec, rec)
        never = _never(job, spec, rec.cls) if reason is not None else None
        now = "fits" if reason is None else str(reason.kind.value)
        verdicts.append(NodeVerdict(name, now, reason, never))
    verdicts.sort(key=lambda v: (_ORDER.get(v.now, len(_ORDER)), v.node))
    shown, rest = verdicts[:limit], verdicts[limit:]
    counts: dict[str, int] = {}
    for v in rest:
        group = "fits" if v.reason is None else v.reason.group
        counts[group] = counts.get(group, 0) + 1
    ordered = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return NodeTable(tuple(shown), len(verdicts), ordered)


def _never(job: Job, spec: TaskSpec, cls: NodeClass) -> Reason | None:
    for plugin in CLASS_FILTERS:
        if isinstance(plugin, NodeReady):
            continue
        reason = plugin.check_class(job, spec, cls)
        if reason is not None:
            return reason
    return None
