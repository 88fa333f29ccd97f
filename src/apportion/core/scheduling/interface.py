"""The framework's interface: what the placement pipeline shows its score
plugins and takes from a strategy.

As in the Kubernetes scheduling framework's ``interface.go``: the
``ScorePlugin`` protocol, the ``Candidate`` (one node or a bucket of identical
nodes) and ``PlaceContext`` it scores, and the ``PlaceOptions`` a strategy
walks and weights plugins with. The pipeline that uses them is
``framework.Placer``; the plugins are in ``scorers``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from apportion.core.scheduling.capacity import Bucket, NodeClass, NodeRec
from apportion.core.scheduling.jobs import Job, TaskSpec
from apportion.core.scheduling.state import ClusterState


class Candidate:
    """A place to put tasks: one node, or a bucket of identical nodes."""

    __slots__ = ("aligned", "bucket", "cls", "count", "exclude", "fit", "free", "rec", "score")

    def __init__(
        self,
        cls: NodeClass,
        free: tuple[int, ...],
        aligned: tuple[int, ...],
        fit: int,
        bucket: Bucket | None,
        rec: NodeRec | None,
        count: int,
        exclude: frozenset[str] | set[str] = frozenset(),
    ) -> None:
        self.cls = cls
        self.free = free
        self.aligned = aligned
        self.fit = fit
        self.bucket = bucket
        self.rec = rec
        self.count = count
        self.exclude = exclude
        self.score = 0.0

    def node_names(self, limit: int) -> list[str]:
        if self.rec is not None:
            return [self.rec.name]
        assert self.bucket is not None
        out: list[str] = []
        exclude = self.exclude
        for name in self.bucket.nodes:
            if name not in exclude:
                out.append(name)
                if len(out) == limit:
                    break
        return out


class ScorePlugin(Protocol):
    name: str
    tight_first: bool
    """True when, of two buckets of one node class with a single resource,
    the one with less of it free never scores lower (with a positive
    weight): a pack walk meets the best of them first. A plugin without it
    is taken not to."""

    def per_node(self, job: Job) -> bool:
        """True when the score depends on the node itself (jobs it runs), not
        only its class and free vector: the walk then offers single nodes."""
        ...

    def applies(self, job: Job, state: ClusterState) -> bool: ...

    def score(self, cand: Candidate, ctx: PlaceContext) -> float: ...


@dataclass(slots=True)
class PlaceContext:
    """What score plugins may look at besides the candidate."""

    job: Job
    spec: TaskSpec
    state: ClusterState
    zones: dict[tuple[str, str], int] = field(default_factory=dict)
    placed: int = 0
    scorers: Sequence[tuple[ScorePlugin, float]] = ()


@dataclass(frozen=True, slots=True)
class PlaceOptions:
    """How a strategy walks and ranks."""

    scorers: tuple[tuple[ScorePlugin, float], ...]
    loose: bool = False
    """Walk from the most free capacity down (spread) instead of from the
    tightest fit up (pack)."""
    limit: int = 4
    """Feasible candidates scored per pick (Nomad's limit iterator)."""
    pack: bool = True
    """Put as many tasks of a group on one node as fit, instead of one."""
    first_is_best: bool = field(init=False, repr=False, compare=False)
    """Among buckets of one single-resource class, the walk's first is the
    pick: a pack walk, and every plugin with a weight is ``tight_first``
    with a positive one (``Placer._walk`` stops there, unscored)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "first_is_best", not self.loose and all(
            w == 0 or (w > 0 and getattr(p, "tight_first", False)) for p, w in self.scorers))
