"""The grant request, served before the framework sees it.

``POST /api/v1/allocations`` is the hot path: under load FastAPI's routing,
dependency injection and middleware stack (error and telemetry wrappers, the
body limit, the request observer, the content-type relabeling) cost more CPU
than the grant itself, and one core is all a server's event loop has. The
application's ``__call__`` (``server/app.py``) hands exactly that method and
path to ``serve_grant``, which does what the stack would have done for it:
the request id (``X-Request-ID`` in, bound into log lines, sent back), the
grant latency histogram, a log line for a 5xx, the same authentication, the
same pydantic model and the same error bodies, then calls the same
``grant_allocation`` the route calls. Every other request takes the normal way.
"""

from __future__ import annotations

import json
import time
from typing import Any

import orjson
import structlog
from pydantic import ValidationError
from starlette.types import Message, Receive, Scope, Send

from apportion.exceptions import ApportionError, BodyTooLarge
from apportion.server.errors import http_status, validation_failure
from apportion.server.routes.allocations import grant_allocation
from apportion.server.routes.observability import log_request, request_id_of
from apportion.server.schemas import AllocationIn

log = structlog.get_logger(__name__)

PATH = "/api/v1/allocations"
PATHS = (PATH, PATH + "/")
MAX_BODY = 1 << 20
"""A grant body is a few hundred bytes; a megabyte is refused unread."""
_JSON = (b"content-type", b"application/json")
_INTERNAL = orjson.dumps(
    {"error": "internal", "message": "internal error; the server log has the details"})


def is_grant(scope: Scope) -> bool:
    return scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in PATHS


async def serve_grant(app: Any, scope: Scope, receive: Receive, send: Send, *,
                      access_log: bool = False) -> None:
    """Answer one grant request on ``app`` (whose ``state`` holds the context)."""
    request_id = request_id_of(scope)
    tokens = structlog.contextvars.bind_contextvars(request_id=request_id)
    started = time.perf_counter()
    status = 500
    try:
        try:
            status, body = await _grant(app.state.ctx, scope, receive)
        except Exception:
            log.exception("unhandled_error", path=scope["path"])
            status, body = 500, _INTERNAL
        await send({"type": "http.response.start", "status": status,
                    "headers": [_JSON, (b"content-length", str(len(body)).encode()),
                                (b"x-request-id", request_id.encode())]})
        await send({"type": "http.response.body", "body": body})
    finally:
        elapsed = time.perf_counter() - started
        services = getattr(app.state, "ctx", None)
        if services is not None:
            services.metrics.observe_grant_request(elapsed, status)
        log_request(scope, status, elapsed, access_log)
        structlog.contextvars.reset_contextvars(**tokens)


async def _grant(ctx: Any, scope: Scope, receive: Receive) -> tuple[int, bytes]:
    try:
        header = _header(scope, b"authorization")
        # Who asks, before a byte of the body is read.
        caller = await ctx.auth.authenticate(header.decode("latin-1") if header else None)
        raw = await _read_body(receive)
        # from_attributes as FastAPI validates bodies: the same messages.
        body = AllocationIn.model_validate(_parse_json(raw), from_attributes=True)
        return 201, orjson.dumps(await grant_allocation(ctx, caller, body))
    except ApportionError as exc:
        return http_status(exc), orjson.dumps(exc.to_dict())
    except ValidationError as exc:
        payload, status = validation_failure(exc.errors())
        return status, orjson.dumps(payload)
    except json.JSONDecodeError as exc:
        payload, status = validation_failure([{
            "type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error",
            "ctx": {"error": exc.msg},
        }])
        return status, orjson.dumps(payload)


def _parse_json(raw: bytes) -> object:
    """The stdlib decoder, as FastAPI's own body parsing uses: the same answers
    and messages on every endpoint (orjson is not a drop-in: it reads an
    integer past 2^64 as a float)."""
    if not raw:
        raise json.JSONDecodeError("Expecting value", "", 0)
    try:
        return json.loads(raw)
    except UnicodeDecodeError as exc:  # bytes json.loads cannot decode: 400, not 500
        raise json.JSONDecodeError("the body is not UTF-8 text", "", exc.start) from None
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", "", 0) from None


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value  # type: ignore[no-any-return]
    return None


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message: Message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise BodyTooLarge(f"the body is over {MAX_BODY} bytes; a grant request is a "
                               "small JSON object")
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)
