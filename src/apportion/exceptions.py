"""Every error apportion raises on purpose, in one place.

Each class says what went wrong in words a person can act on; the server maps
them to HTTP statuses (see ``apportion.server.errors``) and the CLI prints the
message. Core code raises these and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class ApportionError(Exception):
    """Base of all deliberate apportion errors; ``message`` is shown to users."""

    status = 400
    code = "error"

    def __init__(self, message: str, **data: Any) -> None:
        super().__init__(message)
        self.message = message
        self.data = data

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, **self.data}

    def headers(self) -> dict[str, str]:
        """HTTP headers the answer carries besides the body."""
        return {}


class InvalidQuantity(ApportionError):
    """A resource quantity could not be parsed: bad syntax, unknown unit,
    negative, a fraction of an indivisible unit, or too large."""

    code = "invalid_quantity"
    status = 422


class InvalidResourceName(ApportionError):
    """A resource name is not lowercase letters, digits, ``.``, ``_`` and ``-``."""

    code = "invalid_resource_name"
    status = 422


class InvalidInput(ApportionError):
    """Some other field of a request is malformed or out of range."""

    code = "invalid_input"
    status = 422


class UnknownResource(ApportionError):
    """A request asks for a resource that the node(s) considered do not offer."""

    code = "unknown_resource"
    status = 409


class NodeNotFound(ApportionError):
    """No node has that name."""

    code = "node_not_found"
    status = 404


class NodeExists(ApportionError):
    """A node with that name is already registered."""

    code = "node_exists"
    status = 409


class NotFound(ApportionError):
    """No job (or other named thing) has that id."""

    code = "not_found"
    status = 404


class AllocationNotFound(ApportionError):
    """No allocation (active or released) has that id."""

    code = "allocation_not_found"
    status = 404


@dataclass(frozen=True, slots=True)
class Shortage:
    """One resource one node cannot give: what it has free and what was asked."""

    node: str
    resource: str
    available: int
    requested: int

    def describe(self) -> str:
        from apportion.core.resources import format_quantity

        avail = format_quantity(self.resource, self.available)
        req = format_quantity(self.resource, self.requested)
        return (
            f"Insufficient {self.resource} on node {self.node}: {avail} available, {req} requested"
        )

    def to_dict(self) -> dict[str, Any]:
        from apportion.core.resources import format_quantity

        return {
            "node": self.node,
            "resource": self.resource,
            "available": format_quantity(self.resource, self.available),
            "requested": format_quantity(self.resource, self.requested),
            "available_base": self.available,
            "requested_base": self.requested,
        }


class InsufficientResources(ApportionError):
    """No node considered can grant the request now; ``shortages`` lists every
    short resource on every node considered (up to a cap, with the total)."""

    code = "insufficient_resources"
    status = 409

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
    status = 409


class NodeHasAllocations(ApportionError):
    """A node with active allocations cannot be deleted without ``force``."""

    code = "node_has_allocations"
    status = 409


class Unauthenticated(ApportionError):
    """The request carries no token, or a token apportion does not know."""

    code = "unauthenticated"
    status = 401


class PermissionDenied(ApportionError):
    """The token is valid but its role or owner may not do this."""

    code = "permission_denied"
    status = 403


class BodyTooLarge(ApportionError):
    """The request body is over the limit for its endpoint."""

    code = "body_too_large"
    status = 413


class StoreUnavailable(ApportionError):
    """The database could not make a change durable; nothing was granted."""

    code = "store_unavailable"
    status = 503


class ProviderConfigError(ApportionError):
    """The provider config file is malformed: bad TOML, a missing or unknown
    field, an environment variable that is not set. ``field`` names the place."""

    code = "provider_config_error"
    status = 422


class ProviderUnavailable(ApportionError):
    """A provider's SDK is not installed; the message names the extra to install."""

    code = "provider_unavailable"
    status = 501


class ProviderError(ApportionError):
    """A provider (a cloud API, Docker, Kubernetes, a local process) failed to
    create, list or terminate nodes. ``nodes`` holds whatever it did create
    before failing, so the caller can track (and later terminate) them."""

    code = "provider_error"
    status = 502

    def __init__(self, message: str, *, nodes: list[Any] | None = None, **data: Any) -> None:
        super().__init__(message, **data)
        self.nodes: list[Any] = list(nodes or [])


class AgentUnknown(ApportionError):
    """A node's agent called without having registered with this server."""

    code = "agent_unknown"
    status = 409


class Refused(ApportionError):
    """The stored rows say a change must not happen now: the task was already
    placed or has ended, the job changed under the request, or the writer is
    a leader that has been deposed. Nothing of the change was written."""

    code = "conflict"
    status = 409


class NotLeader(Refused):
    """This server is not the leader (or no longer is): decisions that are
    made once for the cluster are refused; another server makes them."""

    code = "not_leader"
    status = 503


class AllocationOwnedByTask(ApportionError):
    """An allocation that a live task holds cannot be released on its own:
    its process still runs on those resources. Cancel the job instead (an
    admin may force it, which stops the task first)."""

    code = "allocation_owned_by_task"
    status = 409


class ReasonReserved(ApportionError):
    """A release reason that only apportion itself records (a node lost, a
    preemption, a task's end) was given by a caller."""

    code = "reason_reserved"
    status = 422


class TooManyFailures(ApportionError):
    """Too many failed authentications from one client address: it is blocked
    for a while (``Retry-After`` says how long) without its tokens being looked at."""

    code = "too_many_failures"
    status = 429

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.data.get("retry_after", 30))}


class TokenTooShort(ApportionError):
    """``APPORTION_ADMIN_TOKEN`` is too short to be safe as an admin credential."""

    code = "token_too_short"
    status = 422
