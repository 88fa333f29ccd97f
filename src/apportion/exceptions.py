"""Every error apportion raises on purpose, in one place for its users.

The errors the pure core raises are defined in :mod:`apportion.core.errors`
and re-exported here; the classes below are those only the outer layers
(services, the server's edge, providers) raise. Each has a stable ``code``
and a message a person can act on; none carries an HTTP status: the server
maps each class to its status and headers (``apportion.server.errors``), and
the CLI prints the message.

The hierarchy of the classes defined here::

    ApportionError
    ├── NotFound
    ├── Unauthenticated
    ├── PermissionDenied
    ├── BodyTooLarge
    ├── StoreUnavailable
    ├── ProviderConfigError
    ├── ProviderUnavailable
    ├── ProviderError
    ├── AgentUnknown
    ├── Refused
    │   └── NotLeader
    ├── AllocationOwnedByTask
    ├── ReasonReserved
    ├── TooManyFailures
    └── TokenTooShort
"""

from __future__ import annotations

from typing import Any

from apportion.core.errors import (
    AllocationNotFound,
    ApportionError,
    CapacityBelowAllocated,
    InsufficientResources,
    InvalidInput,
    InvalidQuantity,
    InvalidResourceName,
    JobRejected,
    NodeExists,
    NodeHasAllocations,
    NodeNotFound,
    UnknownResource,
)
from apportion.core.reasons import Failure, Reason

__all__ = [
    "AgentUnknown",
    "AllocationNotFound",
    "AllocationOwnedByTask",
    "ApportionError",
    "BodyTooLarge",
    "CapacityBelowAllocated",
    "Failure",
    "InsufficientResources",
    "InvalidInput",
    "InvalidQuantity",
    "InvalidResourceName",
    "JobRejected",
    "NodeExists",
    "NodeHasAllocations",
    "NodeNotFound",
    "NotFound",
    "NotLeader",
    "PermissionDenied",
    "ProviderConfigError",
    "ProviderError",
    "ProviderUnavailable",
    "Reason",
    "ReasonReserved",
    "Refused",
    "StoreUnavailable",
    "TokenTooShort",
    "TooManyFailures",
    "Unauthenticated",
    "UnknownResource",
]


class NotFound(ApportionError):
    """No job (or other named thing) has that id."""

    code = "not_found"


class Unauthenticated(ApportionError):
    """The request carries no token, or a token apportion does not know."""

    code = "unauthenticated"


class PermissionDenied(ApportionError):
    """The token is valid but its role or owner may not do this."""

    code = "permission_denied"


class BodyTooLarge(ApportionError):
    """The request body is over the limit for its endpoint."""

    code = "body_too_large"


class StoreUnavailable(ApportionError):
    """The database could not make a change durable; nothing was granted."""

    code = "store_unavailable"


class ProviderConfigError(ApportionError):
    """The provider config file is malformed: bad TOML, a missing or unknown
    field, an environment variable that is not set. ``field`` names the place."""

    code = "provider_config_error"


class ProviderUnavailable(ApportionError):
    """A provider's SDK is not installed; the message names the extra to install."""

    code = "provider_unavailable"


class ProviderError(ApportionError):
    """A provider (a cloud API, Docker, Kubernetes, a local process) failed to
    create, list or terminate nodes. ``nodes`` holds whatever it did create
    before failing, so the caller can track (and later terminate) them."""

    code = "provider_error"

    def __init__(self, message: str, *, nodes: list[Any] | None = None, **data: Any) -> None:
        super().__init__(message, **data)
        self.nodes: list[Any] = list(nodes or [])


class AgentUnknown(ApportionError):
    """A node's agent called without having registered with this server."""

    code = "agent_unknown"


class Refused(ApportionError):
    """The stored rows say a change must not happen now: the task was already
    placed or has ended, the job changed under the request, or the writer is
    a leader that has been deposed. Nothing of the change was written."""

    code = "conflict"


class NotLeader(Refused):
    """This server is not the leader (or no longer is): decisions that are
    made once for the cluster are refused; another server makes them."""

    code = "not_leader"


class AllocationOwnedByTask(ApportionError):
    """An allocation that a live task holds cannot be released on its own:
    its process still runs on those resources. Cancel the job instead (an
    admin may force it, which stops the task first)."""

    code = "allocation_owned_by_task"


class ReasonReserved(ApportionError):
    """A release reason that only apportion itself records (a node lost, a
    preemption, a task's end) was given by a caller."""

    code = "reason_reserved"


class TooManyFailures(ApportionError):
    """Too many failed authentications from one client address: it is blocked
    for a while (``Retry-After`` says how long) without its tokens being looked at."""

    code = "too_many_failures"


class TokenTooShort(ApportionError):
    """``APPORTION_ADMIN_TOKEN`` is too short to be safe as an admin credential."""

    code = "token_too_short"
