"""Every failure answers JSON a person can act on; nothing answers 500 for
bad input.

The HTTP status of each deliberate error lives here, at the edge, and not on
the error: the core raises errors that know nothing of HTTP, and this table
is the one place that says how each is answered.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from apportion.exceptions import (
    AgentUnknown,
    AllocationNotFound,
    AllocationOwnedByTask,
    ApportionError,
    BodyTooLarge,
    CapacityBelowAllocated,
    InsufficientResources,
    InvalidInput,
    InvalidQuantity,
    InvalidResourceName,
    JobRejected,
    NodeExists,
    NodeHasAllocations,
    NodeNotFound,
    NotFound,
    NotLeader,
    PermissionDenied,
    ProviderConfigError,
    ProviderError,
    ProviderUnavailable,
    ReasonReserved,
    Refused,
    StoreUnavailable,
    TokenTooShort,
    TooManyFailures,
    Unauthenticated,
    UnknownResource,
)

HTTP_STATUS: Mapping[type[ApportionError], int] = {
    ApportionError: 400,
    InvalidQuantity: 422,
    InvalidResourceName: 422,
    InvalidInput: 422,
    UnknownResource: 409,
    NodeNotFound: 404,
    NodeExists: 409,
    NotFound: 404,
    AllocationNotFound: 404,
    InsufficientResources: 409,
    CapacityBelowAllocated: 409,
    NodeHasAllocations: 409,
    JobRejected: 422,
    Unauthenticated: 401,
    PermissionDenied: 403,
    BodyTooLarge: 413,
    StoreUnavailable: 503,
    ProviderConfigError: 422,
    ProviderUnavailable: 501,
    ProviderError: 502,
    AgentUnknown: 409,
    Refused: 409,
    NotLeader: 503,
    AllocationOwnedByTask: 409,
    ReasonReserved: 422,
    TooManyFailures: 429,
    TokenTooShort: 422,
}
"""The status each error class is answered with. A class not named takes its
nearest named base's (so a subclass answers as its parent until it is given
its own row)."""


def http_status(exc: ApportionError) -> int:
    """The status ``exc`` is answered with: its class's row, or its nearest base's."""
    for cls in type(exc).__mro__:
        status = HTTP_STATUS.get(cls)
        if status is not None:
            return status
    return HTTP_STATUS[ApportionError]


def http_headers(exc: ApportionError) -> dict[str, str]:
    """HTTP headers the answer to ``exc`` carries besides the body."""
    if isinstance(exc, TooManyFailures):
        return {"Retry-After": str(exc.data.get("retry_after", 30))}
    return {}

log = structlog.get_logger(__name__)


def _describe(error: dict[str, Any]) -> str:
    where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body",))
    if error.get("type") == "json_invalid":
        at = error.get("loc", ())[-1:]
        pos = f" at character {at[0]}" if at and isinstance(at[0], int) else ""
        why = error.get("ctx", {}).get("error", "cannot parse the body")
        return f"malformed JSON{pos}: {why}"
    return f"{where or 'body'}: {error.get('msg', 'invalid')}"


def validation_failure(errors: Sequence[Any]) -> tuple[dict[str, Any], int]:
    """The answer to a body that failed validation: 400 when it is not JSON
    at all, else 422 naming each bad field."""
    malformed = any(e.get("type") == "json_invalid" for e in errors)
    details = [
        {
            # A JSON syntax error's location is a character offset, not a field.
            "field": "" if e.get("type") == "json_invalid"
            else ".".join(str(p) for p in e.get("loc", ()) if p != "body"),
            "message": e.get("msg", ""),
        }
        for e in errors
    ]
    body = {
        "error": "malformed_json" if malformed else "invalid_input",
        "message": "; ".join(_describe(e) for e in errors[:10]),
        "details": json.loads(json.dumps(details, default=str)),
    }
    return body, 400 if malformed else 422


METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at the request's path. Starlette's 405
    names only the first route that matched the path (``Allow: GET`` for
    ``/api/v1/nodes``, which takes POST too); HTTP says ``Allow`` lists them all."""
    routes = request.app.router.routes
    return [m for m in METHODS
            if any(r.matches({**request.scope, "method": m})[0] is Match.FULL for r in routes)]


def install(app: FastAPI) -> None:
    @app.exception_handler(ApportionError)
    async def apportion_error(_: Request, exc: ApportionError) -> JSONResponse:
        return JSONResponse(exc.to_dict(), status_code=http_status(exc),
                            headers=http_headers(exc) or None)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        body, status = validation_failure(exc.errors())
        return JSONResponse(body, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request))}
        return JSONResponse(
            {"error": "http_error", "message": str(exc.detail)},
            status_code=exc.status_code,
            headers=headers,
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled_error", path=request.url.path)
        return JSONResponse(
            {"error": "internal", "message": "internal error; the server log has the details"},
            status_code=500,
        )
