"""Every error the pure core raises on purpose.

Each class says what went wrong in words a person can act on and carries a
stable ``code``, the string a client matches on. None carries an HTTP status
or header: how an error is answered belongs to the edge that answers it
(``apportion.server.errors`` holds the table of statuses), so the core stays
free of any transport. Users import these from ``apportion.exceptions``, which
re-exports them beside the errors only the outer layers raise.

The hierarchy::

    ApportionError
    ├── InvalidQuantity
    ├── InvalidResourceName
    ├── InvalidInput
    ├── UnknownResource
    ├── NodeNotFound
    ├── NodeExists
    ├── AllocationNotFound
    ├── InsufficientResources
    ├── CapacityBelowAllocated
    ├── NodeHasAllocations
    └── JobRejected
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # Only a type: a shortage formats its own quantities, so this module needs
    # nothing of resources at run time (resources raises the errors below).
    from apportion.core.resources import Shortage
    from apportion.core.scheduling.status import Failure

__all__ = [
    "AllocationNotFound",
    "ApportionError",
    "CapacityBelowAllocated",
    "InsufficientResources",
    "InvalidInput",
    "InvalidQuantity",
    "InvalidResourceName",
    "JobRejected",
    "NodeExists",
    "NodeHasAllocations",
    "NodeNotFound",
    "UnknownResource",
]


class ApportionError(Exception):
    """Base of every deliberate apportion error.

    ``message`` is shown to users as it is; ``data`` holds the fields a
    client may read (the field at fault, the node, the shortages), and
    ``to_dict`` is the JSON body the server answers with.
    """

    code = "error"

    def __init__(self, message: str, **data: Any) -> None:
        super().__init__(message)
        self.message = message
        self.data = data

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, **self.data}


class InvalidQuantity(ApportionError):
    """A resource quantity could not be parsed: bad syntax, unknown unit,
    negative, a fraction of an indivisible unit, or too large."""

    code = "invalid_quantity"


class InvalidResourceName(ApportionError):
    """A resource name is not lowercase letters, digits, ``.``, ``_`` and ``-``."""

    code = "invalid_resource_name"


class InvalidInput(ApportionError):
    """Some other field of a request is malformed or out of range."""

    code = "invalid_input"


class UnknownResource(ApportionError):
    """A request asks for a resource that the node(s) considered do not offer."""

    code = "unknown_resource"


class NodeNotFound(ApportionError):
    """No node has that name."""

    code = "node_not_found"


class NodeExists(ApportionError):
    """A node with that name is already registered."""

    code = "node_exists"


class AllocationNotFound(ApportionError):
    """No allocation (active or released) has that id."""

    code = "allocation_not_found"


class InsufficientResources(ApportionError):
    """No node considered can grant the request now; ``shortages`` lists every
    short resource on every node considered (up to a cap, with the total).

    This is the cluster's refusal, naming nodes. The in-process guard's
    refusal about its own host is ``apportion.guard.errors.InsufficientHostResources``.
    """

    code = "insufficient_resources"

    def __init__(
        self,
        shortages: list[Shortage],
        *,
        nodes_considered: int,
        reasons: dict[str, str] | None = None,
        cap: int = 50,
    ) -> None:
        shown = shortages[:cap]
        lines = [s.describe() for s in shown]
        for node, why in list((reasons or {}).items())[:cap]:
            lines.append(f"Node {node} {why}")
        if not lines:
            lines = ["No ready node can take this request"]
        more = len(shortages) - len(shown)
        text = "; ".join(lines) + (f"; and {more} more" if more > 0 else "")
        super().__init__(
            text,
            shortages=[s.to_dict() for s in shown],
            shortages_total=len(shortages),
            nodes_considered=nodes_considered,
            node_reasons=dict(list((reasons or {}).items())[:cap]),
        )
        self.shortages = shortages


class CapacityBelowAllocated(ApportionError):
    """An update would lower a node's capacity below what is allocated on it."""

    code = "capacity_below_allocated"


class NodeHasAllocations(ApportionError):
    """A node with active allocations cannot be deleted without ``force``."""

    code = "node_has_allocations"


class JobRejected(ApportionError):
    """A job is refused at submission: unknown queue, priority out of bounds,
    or a request that can never fit any node or its queue's quota.

    ``failure`` is the status the scheduler gives (its message is this error's,
    its reasons say which queue rule or which nodes); ``field`` names the part
    of the job at fault.
    """

    code = "job_rejected"

    def __init__(self, failure: Failure, *, field: str, job: str) -> None:
        super().__init__(failure.message, field=field, job=job)
        self.failure = failure
