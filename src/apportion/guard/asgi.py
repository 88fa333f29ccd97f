"""ASGI/FastAPI integration: endpoints to mount, and a middleware that turns
a reservation that cannot be had into ``503 Service Unavailable`` with a
``Retry-After`` header, before the request's handler allocates anything.

    app = FastAPI()
    guard = Guard.create(capacity={"memory": "2Gi"}, profiles={"request": {"memory": "64Mi"}})
    install(app, guard, request_profile="request")
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fastapi import APIRouter, FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from apportion.guard.errors import (
    GuardError,
    InsufficientHostResources,
    PoolClosed,
    PoolTimeout,
    ProfileFileError,
    TaskEnvironmentError,
    UnknownProfile,
)
from apportion.guard.guard import Guard

HTTP_STATUS: Mapping[type[GuardError], int] = {
    GuardError: 400,
    InsufficientHostResources: 503,
    UnknownProfile: 404,
    ProfileFileError: 422,
    PoolTimeout: 503,
    PoolClosed: 503,
    TaskEnvironmentError: 500,
}
"""The status a guarded service answers each guard error with; a class not
named takes its nearest named base's. The errors carry none themselves."""


def http_status(exc: GuardError) -> int:
    """The status ``exc`` is answered with: its class's row, or its nearest base's."""
    for cls in type(exc).__mro__:
        status = HTTP_STATUS.get(cls)
        if status is not None:
            return status
    return HTTP_STATUS[GuardError]

RequirementFor = Callable[[Scope], object | None]
"""Given the request's ASGI scope, what it must reserve (a profile name,
mapping or requirement), or ``None`` to let it through unguarded."""


class GuardMiddleware:
    """Hold ``requirement`` for each HTTP request while it is handled.

    ``requirement`` is one profile for every request, or a function of the
    scope (per route, per model). Paths starting with an ``exclude`` prefix
    (the guard's own endpoints by default) pass unguarded, so status stays
    readable under overload. ``timeout`` seconds may be spent waiting for
    room before refusing; with ``reclaim`` (the default) a request may first
    evict idle cached models, since serving beats keeping a cold model.
    """

    def __init__(
        self,
        app: ASGIApp,
        guard: Guard,
        *,
        requirement: object | RequirementFor,
        retry_after: int = 1,
        timeout: float = 0.0,
        reclaim: bool = True,
        exclude: Sequence[str] = ("/guard",),
    ) -> None:
        self.app = app
        self.reclaim = reclaim
        self.guard = guard
        self._for: RequirementFor = (
            requirement if callable(requirement) else (lambda _scope: requirement)
        )
        self.retry_after = retry_after
        self.timeout = timeout
        self.exclude = tuple(exclude)
        self.admitted = 0
        self.rejected = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._excluded(str(scope.get("path", ""))):
            await self.app(scope, receive, send)
            return
        wanted = self._for(scope)
        if wanted is None:
            await self.app(scope, receive, send)
            return
        reservation = self.guard.reserve(wanted, timeout=self.timeout, reclaim=self.reclaim)
        try:
            await reservation.acquire_async()
        except InsufficientHostResources as exc:
            self.rejected += 1
            await self._reject(send, exc)
            return
        self.admitted += 1
        try:
            await self.app(scope, receive, send)
        finally:
            reservation.release()

    def _excluded(self, path: str) -> bool:
        return any(path == p or path.startswith(p.rstrip("/") + "/") for p in self.exclude)

    async def _reject(self, send: Send, exc: InsufficientHostResources) -> None:
        body = json.dumps({**exc.to_dict(), "retry_after": self.retry_after}).encode()
        await send({
            "type": "http.response.start",
            "status": http_status(exc),
            "headers": [
                (b"content-type", b"application/json"),
                (b"retry-after", str(self.retry_after).encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        })
        await send({"type": "http.response.body", "body": body})

    def stats(self) -> dict[str, int]:
        return {"admitted": self.admitted, "rejected": self.rejected}


def guard_router(guard: Guard, *, prefix: str = "/guard") -> APIRouter:
    """``GET {prefix}/status``, ``/report``, ``/alerts``, ``/history`` and
    ``/suggestions``, as JSON."""
    router = APIRouter(prefix=prefix, tags=["guard"])

    @router.get("/status")
    async def status() -> dict[str, Any]:
        return guard.status()

    @router.get("/report")
    async def report(window: float = 60.0) -> dict[str, Any]:
        return guard.report(window)

    @router.get("/alerts")
    async def alerts(limit: int = 100) -> dict[str, Any]:
        return guard.alerts(limit)

    @router.get("/history")
    async def history(limit: int = 300) -> dict[str, Any]:
        return guard.history(limit)

    @router.get("/suggestions")
    async def suggestions(window: float = 60.0) -> list[dict[str, str]]:
        return guard.suggestions(window)

    return router


def install(
    app: FastAPI,
    guard: Guard,
    *,
    request_profile: object | RequirementFor | None = None,
    prefix: str = "/guard",
    retry_after: int = 1,
    timeout: float = 0.0,
    reclaim: bool = True,
) -> None:
    """Mount the endpoints under ``prefix`` and, when ``request_profile`` is
    given, the middleware. Start and stop the monitor with the app's lifespan
    yourself (``guard.start()`` / ``guard.stop()``)."""
    app.include_router(guard_router(guard, prefix=prefix))
    if request_profile is not None:
        app.add_middleware(
            GuardMiddleware,
            guard=guard,
            requirement=request_profile,
            retry_after=retry_after,
            timeout=timeout,
            reclaim=reclaim,
            exclude=(prefix,),
        )
