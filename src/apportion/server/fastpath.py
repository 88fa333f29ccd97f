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
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from typing import Any

import orjson
import structlog
from pydantic import ValidationError
from starlette.types import Message, Receive, Scope, Send

from apportion.exceptions import ApportionError, BodyTooLarge
from apportion.server.edge import EdgeGuard, answer, body_over
from apportion.server.errors import http_status, validation_failure
from apportion.server.routes.allocations import grant_allocation
from apportion.server.routes.observability import log_request, request_id_of
from apportion.server.schemas import AllocationIn
from apportion.service.auth import Principal


def _httptools() -> Any:
    """uvicorn's httptools module (its request cycle, status lines and header
    checks); None where uvicorn runs on h11 alone (the answer then goes
    through uvicorn's own two sends)."""
    try:
        from uvicorn.protocols.http import httptools_impl
    except ImportError:  # pragma: no cover (the package depends on httptools)
        return None
    return httptools_impl


_UVICORN = _httptools()
_CYCLE: type[Any] | None = None if _UVICORN is None else _UVICORN.RequestResponseCycle

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


async def serve_grant(app: Any, scope: Scope, receive: Receive, send: Send,
                      guard: EdgeGuard | None = None, *, access_log: bool = False) -> None:
    """Answer one grant request on ``app`` (whose ``state`` holds the context),
    admitted by ``guard`` as the edge admits every other request."""
    caller: Principal | None = None
    limit = MAX_BODY
    if guard is not None:
        try:
            caller, limit = await guard.check(scope)
        except ApportionError as exc:
            await answer(send, exc)  # as the edge answers: before the request id
            return
    ctx = getattr(app.state, "ctx", None)  # None before the start: answered 500
    await serve_answer(scope, send, _grant(ctx, scope, receive, caller, limit),
                       access_log=access_log,
                       observe=None if ctx is None else ctx.metrics.observe_grant_request)


def _request_id_var() -> ContextVar[Any]:
    """structlog's own context variable for ``request_id`` (the one its
    ``bind_contextvars`` sets and its log lines read), found through its
    public calls: ``bind_contextvars`` and ``reset_contextvars`` look the
    variable up by a formatted name and build a dict of tokens on every
    request (0.9 us a grant); setting and resetting it directly is what they
    do underneath."""
    token = structlog.contextvars.bind_contextvars(request_id=None)["request_id"]
    token.var.reset(token)
    return token.var


_REQUEST_ID = _request_id_var()

Answer = tuple[int, bytes, Sequence[tuple[bytes, bytes]]]
"""A status, a JSON body and any headers beside the content type and length."""


async def serve_answer(scope: Scope, send: Send, produce: Awaitable[Answer], *,
                       access_log: bool,
                       observe: Callable[[float, int], None] | None = None) -> None:
    """What ``RequestObserver`` does around a request, around awaiting
    ``produce``: the request id (bound into log lines, sent back), the
    access log line and a 5xx logged, and ``observe`` (the grant latency
    histogram) given the seconds and the status."""
    request_id = request_id_of(scope)
    token = _REQUEST_ID.set(request_id)
    try:  # outermost: whatever raises below, the id is unbound after
        started = time.perf_counter()
        status = 500
        try:
            headers: Sequence[tuple[bytes, bytes]] = ()
            try:
                status, body, headers = await produce
            except Exception:
                log.exception("unhandled_error", path=scope["path"])
                status, body = 500, _INTERNAL
            await _respond(send, status, body, request_id, headers)
        finally:
            elapsed = time.perf_counter() - started
            if observe is not None:
                observe(elapsed, status)
            log_request(scope, status, elapsed, access_log)
    finally:
        _REQUEST_ID.reset(token)


async def _grant(ctx: Any, scope: Scope, receive: Receive, caller: Principal | None,
                 limit: int) -> Answer:
    try:
        if caller is None:  # no edge guard: who asks, before a byte of the body is read
            header = _header(scope, b"authorization")
            caller = await ctx.auth.authenticate(header.decode("latin-1") if header else None)
        body = validate_grant(await read_body(receive, limit))
        return 201, orjson.dumps(await grant_allocation(ctx, caller, body)), ()
    except ApportionError as exc:
        return http_status(exc), orjson.dumps(exc.to_dict()), ()
    except ValidationError as exc:
        payload, status = validation_failure(exc.errors())
        return status, orjson.dumps(payload), ()
    except json.JSONDecodeError as exc:
        payload, status = validation_failure([{
            "type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error",
            "ctx": {"error": exc.msg},
        }])
        return status, orjson.dumps(payload), ()


_VALIDATOR = AllocationIn.__pydantic_validator__
_VALIDATE_JSON_MAX = 4096
"""Bodies up to this long are tried with pydantic's own JSON reading (a
grant is a few hundred bytes); a longer one, likely refused, is read once,
the FastAPI way, not twice or three times on the event loop."""


def validate_grant(raw: bytes) -> AllocationIn:
    """The grant body as FastAPI would read and validate it. pydantic reads
    a short body it can validate from the bytes in one pass (1.3 us, against
    3.1 us for reading it first and validating the value); any body it
    refuses is read and validated again the FastAPI way, so every error
    keeps its words, and whatever pydantic's own reading refuses that the
    stdlib's accepts (a lone surrogate, a byte-order mark) is answered as
    before. The two ways were shown equal on pydantic 2.14; the property
    test in CI (tests/server/test_fastpath_validate.py) is what guards that
    on any other pydantic the dependency bound lets in."""
    if len(raw) <= _VALIDATE_JSON_MAX:
        try:
            return _VALIDATOR.validate_json(raw)  # type: ignore[no-any-return]
        except ValueError:  # (ValidationError is one)
            pass
    # from_attributes as FastAPI validates bodies: the same messages. The
    # validator itself: ``model_validate`` passes it the same arguments and
    # took as long again in keyword handling.
    return _VALIDATOR.validate_python(  # type: ignore[no-any-return]
        parse_json(raw), from_attributes=True)


async def _respond(send: Send, status: int, body: bytes, request_id: str,
                   headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    """Send the answer; on uvicorn's httptools protocol, in one write."""
    cycle = getattr(send, "__self__", None)
    if _CYCLE is not None and isinstance(cycle, _CYCLE) and not cycle.access_log:
        if cycle.flow.write_paused and not cycle.disconnected:
            # As uvicorn's send: wait for the socket before the head is made,
            # since a shutdown meanwhile turns keep-alive off (and a client
            # gone by then is answered by its send, which writes nothing).
            await cycle.flow.drain()
        head = _direct_head(cycle, status, len(body), request_id, headers)
        if head is not None:
            _write_answer(cycle, head, body)
            return
    await send({"type": "http.response.start", "status": status,
                "headers": [_JSON, (b"content-length", str(len(body)).encode()), *headers,
                            (b"x-request-id", request_id.encode())]})
    await send({"type": "http.response.body", "body": body})


# uvicorn's send writes the head and the body in two writes (two syscalls,
# two segments on loopback, two wake-ups of the client: ~15 us of the
# server's CPU a grant), and its checks of every header, its two messages
# and two awaits were a tenth of the loop's work for a grant. An answer on
# its httptools cycle is written here in one write, with the bytes uvicorn
# would have written (a property test compares them), and the cycle is then
# completed as its send completes it. Anything unusual (access log lines,
# a response already begun, a HEAD, headers uvicorn would refuse or act
# on) goes through uvicorn's send.

_TYPE_AND_LENGTH = b"content-type: application/json\r\ncontent-length: "


class _Defaults:
    """uvicorn's default headers as last seen (a new list when the date
    changes, once a second) and their lines (None: uvicorn would act on one,
    so its send is used)."""

    seen: object = None
    lines: bytes | None = b""


_DEFAULTS = _Defaults()
_ACTED_ON = (b"content-length", b"transfer-encoding", b"connection")


def _header_lines(headers: Sequence[tuple[bytes, bytes]]) -> bytes | None:
    """Headers as uvicorn's send writes them; None where it would refuse one
    or act on it (length, chunking, closing)."""
    lines = []
    for name, value in headers:
        name = name.lower()
        if (_UVICORN.HEADER_RE.search(name) or _UVICORN.HEADER_VALUE_RE.search(value)
                or name in _ACTED_ON):
            return None
        lines.append(b"%s: %s\r\n" % (name, value))
    return b"".join(lines)


def _direct_head(cycle: Any, status: int, length: int, request_id: str,
                 headers: Sequence[tuple[bytes, bytes]]) -> bytes | None:
    """The answer's head as uvicorn would write it, or None to let it."""
    if cycle.response_started or cycle.disconnected or cycle.scope["method"] == "HEAD":
        return None  # (uvicorn leaves out a HEAD's body; no fast path answers one)
    defaults = cycle.default_headers
    if defaults is not _DEFAULTS.seen:
        _DEFAULTS.seen, _DEFAULTS.lines = defaults, _header_lines(defaults)
    common = _DEFAULTS.lines
    extra = _header_lines(headers) if headers else b""
    if common is None or extra is None:
        return None
    return b"%s%s%s%d\r\n%sx-request-id: %s\r\n%s" % (
        _UVICORN.STATUS_LINE[status], common, _TYPE_AND_LENGTH, length, extra,
        request_id.encode(), b"\r\n" if cycle.keep_alive else b"connection: close\r\n\r\n")


def _write_answer(cycle: Any, head: bytes, body: bytes) -> None:
    """Write ``head`` and ``body`` at once and complete ``cycle`` as
    uvicorn's send does after a last body message."""
    cycle.response_started = True
    cycle.waiting_for_100_continue = False
    cycle.transport.write(head + body)
    cycle.response_complete = True
    cycle.message_event.set()
    if not cycle.keep_alive:
        cycle.transport.close()
    cycle.on_response()


_ORJSON_MAX = 512
"""Bodies up to this long may be read by orjson: too short to nest as deep
as the stdlib decoder's recursion limit (which answers "nested too deeply")."""


def _has_float(value: object) -> bool:
    """Whether orjson's reading holds a float anywhere: a number with a
    fraction or an exponent, or an integer past 64 bits (which orjson reads
    as a float where the stdlib reads an int). A plain walk: a regular
    expression over the bytes cost as much as the stdlib's whole reading."""
    if type(value) is dict:
        value = value.values()
    elif type(value) is not list:
        return type(value) is float
    for item in value:
        kind = type(item)
        if kind is float or ((kind is dict or kind is list) and _has_float(item)):
            return True
    return False


def parse_json(raw: bytes) -> object:
    """What the stdlib decoder reads, as FastAPI's own body parsing uses: the
    same answers and messages on every endpoint. orjson reads a short body
    with no float and no 64-bit overflow exactly as the stdlib does in a
    third of the time; a body with a float is read again by the stdlib
    (their floats may differ in the last bit), and anything orjson refuses
    (NaN, a lone surrogate, a byte-order mark, bad UTF-8) goes to the
    stdlib, which answers it."""
    if not raw:
        raise json.JSONDecodeError("Expecting value", "", 0)
    if len(raw) <= _ORJSON_MAX:
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass  # the stdlib's reading: its answer or its own error
        else:
            if not _has_float(value):
                return value
    try:
        return json.loads(raw)
    except UnicodeDecodeError as exc:  # bytes json.loads cannot decode: 400, not 500
        raise json.JSONDecodeError("the body is not UTF-8 text", "", exc.start) from None
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", "", 0) from None
    except json.JSONDecodeError:
        raise
    except ValueError:  # an integer past the stdlib's 4300 digits: 400, not 500
        raise json.JSONDecodeError("a number too long to read", "", 0) from None


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value  # type: ignore[no-any-return]
    return None


async def read_body(receive: Receive, limit: int, *, cap: int | None = MAX_BODY) -> bytes:
    """The whole body, refused past the edge's ``limit`` (and past ``cap``,
    a grant's own bound)."""
    cycle = getattr(receive, "__self__", None)
    if _CYCLE is not None and isinstance(cycle, _CYCLE) and _body_in(cycle):
        # Already read whole (a grant's body comes in its head's segment):
        # taken as uvicorn's receive would hand it over, without its
        # coroutine, the wait on its event and the message.
        raw = bytes(cycle.body)
        cycle.body = bytearray()
        cycle.message_event.clear()
        cycle.flow.resume_reading()
        _check_size(len(raw), limit, cap)
        return raw
    chunks: list[bytes] = []
    size = 0
    while True:
        message: Message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        _check_size(size, limit, cap)
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def _body_in(cycle: Any) -> bool:
    """Whether uvicorn's cycle holds the whole body: its receive would hand
    it over at once, with nothing else to do (no 100-continue to answer)."""
    return not (cycle.more_body or cycle.waiting_for_100_continue or cycle.disconnected
                or cycle.response_complete)


def _check_size(size: int, limit: int, cap: int | None) -> None:
    if size > limit:
        raise body_over(limit)  # the edge's limit, in the edge's words
    if cap is not None and size > cap:
        raise BodyTooLarge(f"the body is over {MAX_BODY} bytes; a grant request is a "
                           "small JSON object")
