"""The FastAPI application: opens the store, rebuilds the ledger, serves the API."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
from collections.abc import AsyncIterator
from types import FrameType
from typing import Any

import structlog
import uvicorn
from fastapi import FastAPI
from starlette.datastructures import State
from starlette.types import ASGIApp, Receive, Scope, Send

from apportion.server import errors
from apportion.server.context import AppContext
from apportion.server.edge import BodyLimits, EdgeGuard
from apportion.server.fastagent import agent_call, serve_agent
from apportion.server.fastpath import is_grant, serve_grant
from apportion.server.fastsubmit import RELABELED, is_submit, serve_submit
from apportion.server.responses.ops import Healthz
from apportion.server.routes import (
    agents,
    allocations,
    capacity,
    cluster,
    health,
    jobs,
    nodes,
    observability,
    planning,
    scaling,
    tokens,
)
from apportion.service.settings import Settings
from apportion.service.wiring import build

log = structlog.get_logger(__name__)

GIL_SWITCH_S = 0.0005
"""How long a thread may hold the GIL while another waits for it (Python's
default is 5 ms)."""

FULL_COLLECTION_EVERY = 100
"""Full collections once per this many middle ones while the server runs
(Python's default: 10)."""


YOUNG_COLLECTION_AFTER = 7000
"""Young collections once per this many new container objects while the
server runs (Python's default: 700). A grant makes a few hundred, nearly all
freed by reference counting before a collection sees them, so at 700 the
collector ran every grant or two for nothing to find: 3 % of the event
loop's instructions per grant (callgrind, bench_grant_loop). Ten times
fewer passes, each over the same few live objects, cost no more each."""


def open_context(settings: Settings) -> AppContext:
    """Open the store, migrate it, rebuild memory: everything a server needs."""
    return build(settings)


class BodiesAreJson:
    """Every body this API takes is JSON. ``curl -d`` labels it a form and
    some clients say text/plain; FastAPI would then not parse it and answer
    "body: Input should be a valid dictionary". Relabel those as JSON (a body
    that is not JSON still answers 400)."""

    RELABELED = RELABELED

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = scope["headers"]
            for i, (key, value) in enumerate(headers):
                if key == b"content-type" and value.lower().startswith(self.RELABELED):
                    headers = [*headers[:i], (key, b"application/json"), *headers[i + 1 :]]
                    scope = {**scope, "headers": headers}
                    break
        await self.app(scope, receive, send)


def _not_the_store(key: Any) -> None:
    if key == "_state":
        raise AttributeError("'_state' is the state's own store, not a name in it")


class PlainState(State):
    """starlette's ``State`` whose names are also plain attributes. starlette
    keeps them in a dict behind ``__getattr__``, which Python calls only
    after its own lookup has failed and formatted an AttributeError: 0.4 us
    for each of the two names (``edge``, ``ctx``) every grant reads. Missing
    names still raise as starlette's do. ``_state`` (the dict itself, as a
    plain attribute) is refused: written as a name, it would replace it."""

    def __setattr__(self, key: Any, value: Any) -> None:
        _not_the_store(key)
        super().__setattr__(key, value)
        object.__setattr__(self, key, value)

    def __delattr__(self, key: Any) -> None:
        _not_the_store(key)
        super().__delattr__(key)
        object.__delattr__(self, key)

    def __setitem__(self, key: str, value: Any) -> None:
        self.__setattr__(key, value)

    def __delitem__(self, key: str) -> None:
        self.__delattr__(key)


class ApportionAPI(FastAPI):
    """FastAPI, with grant requests, job submissions and the agent's polls and
    reports answered before its middleware stack (``server/fastpath.py``,
    ``server/fastsubmit.py`` and ``server/fastagent.py`` say why and what they
    do in its place)."""

    access_log = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.state = PlainState()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        guard: EdgeGuard | None = getattr(self.state, "edge", None)
        if is_grant(scope):
            await serve_grant(self, scope, receive, send, guard, access_log=self.access_log)
            return
        if guard is not None and is_submit(scope):
            await serve_submit(self, scope, receive, send, guard, super().__call__,
                               access_log=self.access_log)
            return
        agent = None if guard is None else agent_call(scope)
        if guard is not None and agent is not None:
            await serve_agent(self, scope, receive, send, guard, super().__call__, *agent,
                              access_log=self.access_log)
            return
        if guard is not None and scope["type"] == "http":
            admitted = await guard.admit(scope, receive, send)
            if admitted is None:
                return  # refused before the body was read
            receive, send = admitted
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = await asyncio.to_thread(build, settings)
        app.state.ctx = services
        app.state.edge = EdgeGuard(services.auth, BodyLimits(
            default=settings.max_body, checkpoint=services.files.limits.checkpoint_max + 4096))
        loop = asyncio.get_running_loop()
        # Called from the process's signal handler, outside the event loop.
        app.state.begin_stop = lambda: loop.call_soon_threadsafe(services.begin_stop)
        await services.start()
        # Everything built so far (modules, the framework's routes and models,
        # the ledger as loaded) lives as long as the process: out of the
        # collector's way. A full collection otherwise walks all of it, and
        # under a stream of grants that held the event loop 60-120 ms every
        # second or two.
        gc.collect()
        gc.freeze()
        # What a grant keeps (its allocation, its ledger entries) is not
        # frozen: a full collection walks all of it, 15-50 ms a pass at
        # 40,000 allocations, and those passes were the grant p99 (52-53 ms
        # with them in bench_http_grants, 16-18 ms with them ten times rarer).
        threshold = gc.get_threshold()
        gc.set_threshold(YOUNG_COLLECTION_AFTER, threshold[1], FULL_COLLECTION_EVERY)
        # The committer's worker thread (SQLite's COMMIT, PostgreSQL's whole
        # batch) waits for the GIL after each fsync or round trip, up to the
        # switch interval while the loop is busy; 0.5 ms instead of 5 ms was
        # +12 % grants/s on SQLite and +5 % on PostgreSQL (bench_http_grants).
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(GIL_SWITCH_S)
        log.info(
            "server_ready",
            store=services.uow.engine.url.render_as_string(hide_password=True),
            server_id=settings.server_id,
            leader=services.leadership.is_leader,
        )
        try:
            yield
        finally:
            await services.stop()
            sys.setswitchinterval(switch_interval)
            gc.set_threshold(*threshold)
            gc.unfreeze()

    app = ApportionAPI(
        title="apportion",
        version="0.1.0",
        description="Resource manager for heterogeneous compute clusters: an exact ledger of "
        "what every node has and what is granted to whom.",
        lifespan=lifespan,
        # curl -d sends form encoding by default; a JSON body is JSON whatever
        # the header says, and scripts should not fail on that.
        strict_content_type=False,
        # apportion exports its own Prometheus metrics; FastAPI's OpenTelemetry
        # hook would look up its providers on every request for nothing.
        telemetry={"tracing": False, "metrics": False},
    )
    app.access_log = settings.access_log
    errors.install(app)
    app.add_middleware(BodiesAreJson)
    observability.install(app, access_log=settings.access_log)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> Healthz:
        return {"status": "ok"}

    for module in (nodes, allocations, capacity, jobs, tokens, agents, health, planning, cluster):
        app.include_router(module.router)
    app.include_router(agents.public)
    app.include_router(scaling.router)
    return app


class StoppingServer(uvicorn.Server):
    """uvicorn's server, telling the app when a stop begins: uvicorn waits
    for open requests before it runs the app's shutdown, and agents' held
    long-polls would otherwise run out the graceful timeout and end in 500s."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        begin_stop = getattr(self.app.state, "begin_stop", None)
        if begin_stop is not None:
            begin_stop()
        super().handle_exit(sig, frame)
