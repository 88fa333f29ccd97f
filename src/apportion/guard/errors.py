"""Errors the in-process guard raises on purpose.

They subclass :class:`apportion.exceptions.ApportionError`, so a service that
already maps apportion errors to responses handles these too. Like every
apportion error they carry a ``code`` and no HTTP status: the guard's HTTP
edge, ``apportion.guard.asgi``, holds the table of statuses.

``InsufficientHostResources`` is the host's refusal (this machine, or this
task's allocation), a class apart from the cluster's
``apportion.exceptions.InsufficientResources``, which speaks of nodes; both
send ``code = "insufficient_resources"``, so clients match either alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from apportion.core.resources import format_human, format_quantity
from apportion.exceptions import ApportionError


class GuardError(ApportionError):
    """Base of every error raised by ``apportion.guard``."""

    code = "guard_error"


@dataclass(frozen=True, slots=True)
class Short:
    """One resource the local host cannot give: free amount against the need."""

    resource: str
    available: int
    required: int

    def describe(self) -> str:
        avail = format_human(self.resource, self.available)
        need = format_human(self.resource, self.required)
        return f"{self.resource}: {avail} available, {need} required"

    def to_dict(self) -> dict[str, Any]:
        return {
            "resource": self.resource,
            "available": format_quantity(self.resource, self.available),
            "required": format_quantity(self.resource, self.required),
            "available_base": self.available,
            "required_base": self.required,
        }


class InsufficientHostResources(GuardError):
    """The host (or this task's allocation) cannot hold the request now.

    ``shortages`` names every short resource with its available and required
    amount; ``what`` is the profile name or a short description of the work.
    """

    code = "insufficient_resources"

    def __init__(self, shortages: Sequence[Short], *, what: str | None = None) -> None:
        head = f"not enough resources for {what}" if what else "not enough resources"
        text = head + ": " + "; ".join(s.describe() for s in shortages)
        super().__init__(text, what=what, shortages=[s.to_dict() for s in shortages])
        self.shortages = list(shortages)
        self.what = what


class UnknownProfile(GuardError):
    """A requirement profile name that was never registered."""

    code = "unknown_profile"


class ProfileFileError(GuardError):
    """A profiles file could not be read or does not have the expected shape."""

    code = "invalid_profiles_file"


class ReservationError(GuardError):
    """A reservation object was used the wrong way (entered twice, released
    when it holds nothing)."""

    code = "reservation_misuse"


class PoolTimeout(GuardError):
    """No pooled object became free within the acquisition timeout."""

    code = "pool_timeout"


class PoolClosed(GuardError):
    """The pool was closed; no more checkouts."""

    code = "pool_closed"


class TaskEnvironmentError(GuardError):
    """``APPORTION_RESOURCES`` or ``APPORTION_DEVICES`` is set but malformed."""

    code = "invalid_task_environment"
