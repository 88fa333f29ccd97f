"""Seeing the cluster: ``/metrics``, the event stream, history, the dashboard,
and request ids in every log line.

- ``GET /metrics``: Prometheus text format (``service/metrics.py``); needs a
  token like the API (any role), so a scraper sends ``Authorization: Bearer``.
- ``GET /api/v1/events``: every state change as server-sent events, resumable
  with ``Last-Event-ID`` (or ``?after=``); bearer token in the header only.
- ``GET /api/v1/history``: a metric's series with trends (``service/history_service.py``).
- ``GET /``: the dashboard (static files in ``server/static``; it asks for a
  token and calls the API with it).

``install`` registers all of it on the app; the composition root
(``service/wiring.py``) builds and runs the observers.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from random import getrandbits
from typing import Annotated, Any

import orjson
import structlog
from fastapi import APIRouter, FastAPI, Query, Request, Response
from fastapi.responses import FileResponse, StreamingResponse
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from apportion.core.records import Event
from apportion.exceptions import InvalidInput
from apportion.server.context import Caller
from apportion.server.responses import AUTHED, errors
from apportion.server.responses.ops import History
from apportion.service.events_stream import event_dict
from apportion.service.metrics import CONTENT_TYPE

log = structlog.get_logger(__name__)

STATIC = Path(__file__).resolve().parent.parent / "static"
GRANT_PATH = "/api/v1/allocations"
KEEPALIVE_S = 15.0
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")

router = APIRouter(tags=["observability"])


def install(app: FastAPI, *, access_log: bool = False) -> None:
    """Routes, the dashboard's files and the request middleware (call once,
    after the other middlewares, so timing covers the allocation fast path)."""
    app.include_router(router)
    app.mount("/dashboard", StaticFiles(directory=STATIC), name="dashboard")
    app.add_middleware(RequestObserver, access_log=access_log)


# -- /metrics -------------------------------------------------------------------------


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request, _: Caller) -> Response:
    """Prometheus text format; the same bearer tokens as the API."""
    metrics = request.app.state.ctx.metrics
    families = metrics.snapshot()  # from memory, on the loop; the text off it
    body = await asyncio.to_thread(metrics.render, families)
    return Response(body, media_type=CONTENT_TYPE)


# -- the event stream -----------------------------------------------------------------


def _resume_from(request: Request, after: int | None) -> int | None:
    header = request.headers.get("last-event-id")
    if header is None or not header.strip():
        return after
    text = header.strip()
    if not text.isdigit() or len(text) > 19:
        raise InvalidInput("Last-Event-ID: expected the id of an event (a whole number)",
                           field="Last-Event-ID")
    return int(text)


def _wanted(kinds: list[str], event: Event) -> bool:
    return not kinds or any(event.kind == k or event.kind.startswith(k.rstrip(".") + ".")
                            for k in kinds)


def sse_message(event: Event) -> bytes:
    return b"id: %d\ndata: %s\n\n" % (event.id, orjson.dumps(event_dict(event)))


@router.get("/api/v1/events", include_in_schema=False)
async def events(
    request: Request, _: Caller,
    after: Annotated[int | None, Query(ge=0, le=2**62,
                                       description="resume after this event id")] = None,
    tail: Annotated[int | None, Query(ge=0, le=100_000, description=(
        "start this many event ids back from the newest"))] = None,
    kind: Annotated[str | None, Query(max_length=1000, description=(
        "comma-separated kinds or kind prefixes, e.g. 'job,allocation.released'"))] = None,
    follow: bool = True,
) -> StreamingResponse:
    """Every state change as server-sent events (``id`` is the event id, ``data``
    the event as JSON), after ``Last-Event-ID`` / ``after`` (or the last
    ``tail`` ids, or from now on). With ``follow=false`` the stream ends at
    the newest event instead of waiting for more."""
    hub = request.app.state.ctx.hub
    start_after = _resume_from(request, after)
    if start_after is None and tail is not None:
        start_after = max(0, hub.last_id - tail)
    kinds = [k.strip() for k in (kind or "").split(",") if k.strip()]
    end = hub.last_id if not follow else None

    async def stream() -> AsyncIterator[bytes]:
        yield b"retry: 2000\n: apportion events\n\n"
        if end is not None and (start_after is None or start_after >= end):
            return
        async for event in hub.follow(start_after, idle_s=KEEPALIVE_S):
            if event is None:
                yield b": keep-alive\n\n"
                continue
            if _wanted(kinds, event):
                yield sse_message(event)
            if end is not None and event.id >= end:
                return

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"cache-control": "no-cache", "x-accel-buffering": "no"})


# -- history ----------------------------------------------------------------------------

Label = Annotated[str | None, Query(max_length=253)]


@router.get("/api/v1/history", responses=errors(*AUTHED, 422))
async def history(
    request: Request, _: Caller,
    metric: Annotated[str, Query(max_length=64, description=(
        "utilization, queue_length or queue_wait_seconds"))],
    node: Label = None, facility: Label = None, resource: Label = None, queue: Label = None,
    window_seconds: Annotated[float, Query(gt=0, le=10 * 366 * 86400.0,
                                           allow_inf_nan=False)] = 3600.0,
    step: Annotated[float | None, Query(gt=0, le=366 * 86400.0, allow_inf_nan=False)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> History:
    """A metric's series over the last ``window_seconds``, one point per
    ``step``, each with its trend (``increasing``, ``decreasing`` or
    ``stable``) and fitted slope. A label filter of ``*`` matches any value;
    ``node`` / ``facility`` pick per-node / per-facility utilization."""
    service = request.app.state.ctx.history
    filters = {"node": node, "facility": facility, "resource": resource, "queue": queue}
    answer: dict[str, Any] = await asyncio.to_thread(
        service.query, metric, filters, window_s=window_seconds, step_s=step, limit=limit)
    return answer


# -- the dashboard ---------------------------------------------------------------------


@router.get("/", include_in_schema=False)
async def dashboard() -> FileResponse:
    """The dashboard page (no data in it: it asks for a token, then the API)."""
    return FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})


# -- request ids, access log, grant latency -----------------------------------------------


class RequestObserver:
    """Every request gets an id (``X-Request-ID``, taken from the caller when
    sane, else made): it is bound into every log line written while the request
    is served and sent back in the response. A failed request (5xx) is logged;
    every request is with ``APPORTION_ACCESS_LOG=1``. Grant requests are timed
    into the allocation latency histogram."""

    def __init__(self, app: ASGIApp, access_log: bool = False) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        tokens = structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status = 500
        header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            if scope["method"] == "POST" and scope["path"] in (GRANT_PATH, GRANT_PATH + "/"):
                services = getattr(scope["app"].state, "ctx", None)
                if services is not None:
                    services.metrics.observe_grant_request(elapsed, status)
            log_request(scope, status, elapsed, self.access_log)
            structlog.contextvars.reset_contextvars(**tokens)


def log_request(scope: Scope, status: int, elapsed: float, access_log: bool) -> None:
    """The access log line: every 5xx, and every request with APPORTION_ACCESS_LOG=1."""
    if status >= 500 or access_log:
        emit = log.warning if status >= 500 else log.info
        emit("request", method=scope["method"], path=scope["path"], status=status,
             duration_ms=round(elapsed * 1000, 3))


def request_id_of(scope: Scope) -> str:
    for key, value in scope["headers"]:
        if key == b"x-request-id":
            text: str = value.decode("latin-1")
            if REQUEST_ID.match(text):
                return text
            break
    # Not os.urandom: a getrandom syscall on every request (uuid4 costs 7 µs).
    # A request id correlates log lines; it need not be unpredictable.
    return f"{getrandbits(64):016x}"
