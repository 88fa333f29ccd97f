"""An agent that knows several servers moves to the next when its own is gone.

Any server answers any agent (assignments come from the store), so a
connection refused or timed out is tried again on the next configured
server at once, and the agent stays there while it answers. When every
server is down, the agent's loops back off with jitter (``retry_delay``) so a
fleet that lost its server does not come back to the next one in lockstep.
"""

from __future__ import annotations

import random

import httpx
import structlog

log = structlog.get_logger(__name__)

MAX_RETRY_S = 5.0
FAILOVER_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError)
"""Errors that say the server is unreachable or went away mid-connection,
before it could act on the request: safe to send to another server (every
agent request is idempotent anyway)."""


def parse_servers(text: str) -> list[httpx.URL]:
    """``http://a:8080,http://b:8080`` as URLs (at least one)."""
    urls = [httpx.URL(part.strip().rstrip("/")) for part in text.split(",") if part.strip()]
    if not urls:
        raise ValueError("--server: give at least one URL")
    for url in urls:
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"--server: {url} is not an http(s) URL")
    return urls


class FailoverTransport(httpx.AsyncBaseTransport):
    """Sends each request to the current server, moving on when it is unreachable."""

    def __init__(self, servers: list[httpx.URL], inner: httpx.AsyncBaseTransport) -> None:
        self.servers = servers
        self.inner = inner
        self.current = 0

    @property
    def server(self) -> httpx.URL:
        return self.servers[self.current]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if len(self.servers) == 1:
            # One server: the URL is already its own; rewriting it (a URL
            # copy and a header per request) would be work for nothing.
            return await self.inner.handle_async_request(request)
        error: Exception | None = None
        for _ in range(len(self.servers)):
            target = self.server
            request.url = request.url.copy_with(scheme=target.scheme, host=target.host,
                                                port=target.port)
            request.headers["host"] = target.netloc.decode()
            try:
                return await self.inner.handle_async_request(request)
            except FAILOVER_ERRORS as exc:
                error = exc
                if len(self.servers) > 1:
                    self.current = (self.current + 1) % len(self.servers)
                    log.warning("server_unreachable", server=str(target),
                                next=str(self.server), error=repr(exc))
        assert error is not None
        raise error

    async def aclose(self) -> None:
        await self.inner.aclose()


def retry_delay(delay: float, rng: random.Random | None = None) -> float:
    """The next wait after ``delay``: doubled up to a cap, with equal jitter
    (between half and all of it), so many agents do not retry together."""
    grown = min(delay * 2, MAX_RETRY_S)
    return grown / 2 + (rng or random).uniform(0, grown / 2)
