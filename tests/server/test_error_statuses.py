"""Each error's HTTP status lives at the edge, not on the error: the table
answers every class with the status it had when the errors carried their own,
and the core's errors know nothing of HTTP."""

from __future__ import annotations

import inspect

import pytest

from apportion import exceptions
from apportion.core import errors as core_errors
from apportion.guard import asgi as guard_asgi
from apportion.guard import errors as guard_errors
from apportion.server.errors import HTTP_STATUS, http_headers, http_status

# The statuses as they were answered before the table existed: pinned so
# that moving them to the edge changed no response.
EXPECTED = {
    "ApportionError": 400,
    "InvalidQuantity": 422,
    "InvalidResourceName": 422,
    "InvalidInput": 422,
    "UnknownResource": 409,
    "NodeNotFound": 404,
    "NodeExists": 409,
    "NotFound": 404,
    "AllocationNotFound": 404,
    "InsufficientResources": 409,
    "CapacityBelowAllocated": 409,
    "NodeHasAllocations": 409,
    "JobRejected": 422,
    "Unauthenticated": 401,
    "PermissionDenied": 403,
    "BodyTooLarge": 413,
    "StoreUnavailable": 503,
    "ProviderConfigError": 422,
    "ProviderUnavailable": 501,
    "ProviderError": 502,
    "AgentUnknown": 409,
    "Refused": 409,
    "NotLeader": 503,
    "AllocationOwnedByTask": 409,
    "ReasonReserved": 422,
    "TooManyFailures": 429,
    "TokenTooShort": 422,
}


def _error_classes(module: object) -> dict[str, type[exceptions.ApportionError]]:
    return {
        name: cls for name, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, exceptions.ApportionError)
    }


def test_every_public_error_has_its_own_row_with_the_old_status() -> None:
    classes = _error_classes(exceptions)
    assert set(classes) == set(EXPECTED)
    for name, cls in classes.items():
        assert HTTP_STATUS[cls] == EXPECTED[name], name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_an_error_answers_its_status(name: str) -> None:
    cls = getattr(exceptions, name)
    exc = cls.__new__(cls)
    assert http_status(exc) == EXPECTED[name]


def test_a_subclass_without_a_row_answers_as_its_parent() -> None:
    class Later(exceptions.Refused):
        code = "later"

    assert http_status(Later("x")) == 409


def test_only_too_many_failures_carries_headers() -> None:
    assert http_headers(exceptions.TooManyFailures("slow down", retry_after=7)) == {
        "Retry-After": "7"}
    assert http_headers(exceptions.TooManyFailures("slow down")) == {"Retry-After": "30"}
    assert http_headers(exceptions.Refused("no")) == {}


def test_core_errors_carry_no_http() -> None:
    for cls in _error_classes(core_errors).values():
        assert not hasattr(cls, "status"), cls
        assert not hasattr(cls, "headers"), cls
        assert cls.code


def test_guard_errors_answer_their_old_statuses() -> None:
    expected = {
        guard_errors.GuardError: 400,
        guard_errors.InsufficientHostResources: 503,
        guard_errors.UnknownProfile: 404,
        guard_errors.ProfileFileError: 422,
        guard_errors.ReservationError: 400,
        guard_errors.PoolTimeout: 503,
        guard_errors.PoolClosed: 503,
        guard_errors.TaskEnvironmentError: 500,
    }
    for cls, status in expected.items():
        assert not hasattr(cls, "status"), cls
        assert guard_asgi.http_status(cls.__new__(cls)) == status, cls
