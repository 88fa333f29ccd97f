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
    # Only a type: a refusal's reasons format their own quantities, so this
    # module needs nothing of resources at run time (resources raises the
    # errors below, and reasons imports resources).
    from apportion.core.reasons import Failure

__all__ = [
    "SHORTAGES_SHOWN",
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


SHORTAGES_SHOWN = 50
"""How many shortages (and how many unready nodes) a refused grant lists."""


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
    """No node considered can grant the request now.

    ``failure`` says why in one line with one ``Reason`` per short resource
    on each node or per node that takes nothing now (``reasons.refusal``
    builds it); ``shortages`` are the reasons that name a short resource.
    The answer lists the first ``SHORTAGES_SHOWN`` of each, with the total.

    This is the cluster's refusal, naming nodes. The in-process guard's
    refusal about its own host is ``apportion.guard.errors.InsufficientHostResources``.
    """

    code = "insufficient_resources"

    def __init__(self, failure: Failure, *, nodes_considered: int) -> None:
        short = [r for r in failure.reasons if r.is_shortage]
        unready = [r for r in failure.reasons if not r.is_shortage][:SHORTAGES_SHOWN]
        super().__init__(
            failure.message,
            shortages=[r.shortage() for r in short[:SHORTAGES_SHOWN]],
            shortages_total=len(short),
            nodes_considered=nodes_considered,
            node_reasons={r.node or "": r.message for r in unready},
        )
        self.failure = failure
        self.shortages = short


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
