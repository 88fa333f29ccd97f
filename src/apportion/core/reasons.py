"""The one status type: a ``Reason`` (one refusal by one plugin, about one
node or all of them) and a ``Failure`` (why a request cannot be placed now,
in one line, with its ``Kind`` and every ``Reason`` behind it: the Kubernetes
framework's ``Status``).

Every refusal in the project is one of these: a filter plugin's verdict on a
node, a job's placement failure, a refusal at submission (``JobRejected``
carries its ``Failure``), explain's advice (``Explanation`` holds
``Reason``s) and a plain grant's refusal (``InsufficientResources`` carries
its ``Failure``, one ``Reason`` per short resource or unready node).

They live here, below ``scheduling``, because the ledger's refusals use them
too; ``scheduling.status`` holds the pipeline's wording of its reasons.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from apportion.core.errors import SHORTAGES_SHOWN
from apportion.core.resources import format_human, format_quantity

__all__ = ["NODE_READY", "RESOURCES_FIT", "Code", "Failure", "Kind", "Reason", "not_schedulable",
           "refusal", "short_on_node"]

NODE_READY = "NodeReady"
"""The plugin that refuses nodes not ready or unhealthy (``filters.NodeReady``)."""
RESOURCES_FIT = "ResourcesFit"
"""The plugin that refuses nodes short of a requested resource (``filters.ResourcesFit``)."""


class Code(StrEnum):
    INSUFFICIENT = "insufficient"
    CAPACITY = "capacity"
    UNKNOWN_RESOURCE = "unknown_resource"
    LABEL = "label"
    NOT_READY = "not_ready"
    UNHEALTHY = "unhealthy"
    DEVICE = "device"
    AFFINITY = "affinity"
    ANTI_AFFINITY = "anti_affinity"
    QUOTA = "quota"
    QUEUE = "queue"
    PRIORITY = "priority"


class Kind(StrEnum):
    BUSY = "busy"
    CONDITION = "condition"
    NEVER = "never"


SHORT = frozenset({Code.INSUFFICIENT, Code.UNKNOWN_RESOURCE})
"""The codes of a resource a node cannot give (a grant's ``shortages``)."""


@dataclass(frozen=True, slots=True)
class Reason:
    """Why one node (or every node of a class) cannot take a task or a grant.

    ``node`` names the node when the reason is about one (a grant's
    refusal); a pipeline reason about a class of nodes leaves it empty."""

    plugin: str
    code: Code
    kind: Kind
    message: str
    resource: str | None = None
    requested: int | None = None
    available: int | None = None
    node: str | None = None

    @property
    def is_shortage(self) -> bool:
        """Whether it names a resource the node cannot give (a grant's
        ``shortages``), rather than a state that keeps the node out."""
        return self.code in SHORT

    @property
    def group(self) -> str:
        """What explain counts nodes by: the code, with the resource for
        resource shortages (so cpu and gpu shortages are told apart)."""
        if self.resource is not None:
            return f"{self.code.value} {self.resource}"
        return self.code.value

    def shortage(self) -> dict[str, Any]:
        """A short resource on a node as the API has always answered it
        (an entry of ``insufficient_resources``' ``shortages``)."""
        r = self.resource or ""
        return {
            "node": self.node,
            "resource": r,
            "available": format_quantity(r, self.available or 0),
            "requested": format_quantity(r, self.requested or 0),
            "available_base": self.available or 0,
            "requested_base": self.requested or 0,
            **({"offered": False} if self.code is Code.UNKNOWN_RESOURCE else {}),
        }


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a request could not be placed now, in one line, with its kind."""

    code: Code
    kind: Kind
    message: str
    reasons: tuple[Reason, ...] = ()

    @classmethod
    def of(cls, reason: Reason) -> Failure:
        """A failure with one reason, in that reason's words."""
        return cls(reason.code, reason.kind, reason.message, (reason,))


def short_on_node(node: str, resource: str, available: int, requested: int, *,
                  offered: bool = True) -> Reason:
    """Node ``node`` has less of ``resource`` free than requested; or, with
    ``offered`` false, has none at all (waiting would not help)."""
    if not offered:
        return Reason(RESOURCES_FIT, Code.UNKNOWN_RESOURCE, Kind.NEVER,
                      f"node {node} has no {resource}", resource, requested, 0, node)
    return Reason(
        RESOURCES_FIT, Code.INSUFFICIENT, Kind.BUSY,
        f"Insufficient {resource} on node {node}: {format_human(resource, available)} "
        f"available, {format_human(resource, requested)} requested",
        resource, requested, available, node,
    )


def not_schedulable(node: str, why: str, *, unhealthy: bool = False) -> Reason:
    """Node ``node`` takes nothing now: ``why`` says its state (``is
    draining``), as the API's ``node_reasons`` map has always said it."""
    code = Code.UNHEALTHY if unhealthy else Code.NOT_READY
    return Reason(NODE_READY, code, Kind.CONDITION, why, node=node)


def refusal(reasons: Sequence[Reason]) -> Failure:
    """A grant's refusal: every node's reasons, the first ``SHORTAGES_SHOWN``
    of each sort in its message, with the count of the short ones left out."""
    short = [r for r in reasons if r.is_shortage]
    other = [r for r in reasons if not r.is_shortage]
    lines = [r.message for r in short[:SHORTAGES_SHOWN]]
    lines += [f"Node {r.node} {r.message}" for r in other[:SHORTAGES_SHOWN]]
    more = len(short) - SHORTAGES_SHOWN
    text = "; ".join(lines or ["No ready node can take this request"])
    if more > 0:
        text += f"; and {more} more"
    # Busy when some node could take it once something is released; else
    # the first reason's code and kind (every node unready, or lacking it).
    if not reasons or any(r.kind is Kind.BUSY for r in short):
        return Failure(Code.INSUFFICIENT, Kind.BUSY, text, tuple(reasons))
    return Failure(reasons[0].code, reasons[0].kind, text, tuple(reasons))
