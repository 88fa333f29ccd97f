"""What every request meets first: who it is, how many times it failed, how big it is.

Before any body is read or parsed:

1. **Failed authentications are limited per client address.** More than
   ``FAILURES_ALLOWED`` bad tokens within ``WINDOW_S`` blocks the address for
   ``BLOCK_S``: its requests answer 429 with ``Retry-After``, without a look
   at their tokens (a token already known good still passes, so a scanner
   behind the same address does not lock out a working client).
2. **Authentication.** Every ``/api/`` request (and ``/metrics``) must carry
   a valid token before its body is read; the only exceptions are an agent
   registering with a one-time join token and the dashboard exchanging a
   one-time sign-in code, which their routes check (a refused code counts
   as a failed authentication).
3. **Body size.** ``Content-Length`` over the route's limit answers 413 at
   once; a body without one is counted as it arrives and cut at the limit.
   The limit is ``APPORTION_MAX_BODY`` (1 MiB) except for the routes that
   carry more: log chunks and checkpoints.

A server once parsed a 20 MB body from a caller without a token (801 MB of
memory, ``/healthz`` stalled 2 s) and answered 529 wrong tokens a second.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
from starlette.types import Message, Receive, Scope, Send

from apportion.exceptions import ApportionError, BodyTooLarge, TooManyFailures, Unauthenticated
from apportion.server.errors import http_headers, http_status
from apportion.service.auth import Authenticator, Principal
from apportion.service.join_tokens import is_join_token

FAILURES_ALLOWED = 20
WINDOW_S = 10.0
BLOCK_S = 30.0
MAX_ADDRESSES = 10_000
LOG_PATH = re.compile(r"^/api/v1/agents/[^/]+/tasks/[^/]+/logs/[^/]+$")
CHECKPOINT_PATH = re.compile(r"^/api/v1/agents/[^/]+/tasks/[^/]+/checkpoint$")
AGENTS_PREFIX = "/api/v1/agents/"
"""What every path with a larger body limit begins with."""
REGISTER_PATH = "/api/v1/agents/register"
SESSION_PATH = "/api/v1/auth/session"


@dataclass
class FailedLogins:
    """Failed authentications per client address, and who is blocked until when."""

    clock: Callable[[], float] = time.monotonic
    failures: dict[str, deque[float]] = field(default_factory=dict)
    blocked: dict[str, float] = field(default_factory=dict)

    def retry_after(self, address: str) -> float | None:
        """Seconds until ``address`` may try again, or None."""
        until = self.blocked.get(address)
        if until is None:
            return None
        left = until - self.clock()
        if left <= 0:
            del self.blocked[address]
            return None
        return left

    def failed(self, address: str) -> None:
        now = self.clock()
        if len(self.failures) >= MAX_ADDRESSES and address not in self.failures:
            self.failures.pop(next(iter(self.failures)))
        seen = self.failures.setdefault(address, deque(maxlen=FAILURES_ALLOWED + 1))
        seen.append(now)
        while seen and now - seen[0] > WINDOW_S:
            seen.popleft()
        if len(seen) > FAILURES_ALLOWED:
            self.blocked[address] = now + BLOCK_S
            seen.clear()


@dataclass
class BodyLimits:
    default: int = 1 << 20
    log_chunk: int = (4 << 20) + 4096
    checkpoint: int = 256 << 20

    def for_path(self, path: str) -> int:
        if not path.startswith(AGENTS_PREFIX):  # neither pattern can match: no search
            return self.default
        if LOG_PATH.match(path):
            return self.log_chunk
        if CHECKPOINT_PATH.match(path):
            return self.checkpoint
        return self.default


class EdgeGuard:
    """Admits a request (authenticated, not blocked, not too big) or answers it."""

    def __init__(self, auth: Authenticator, limits: BodyLimits,
                 logins: FailedLogins | None = None) -> None:
        self.auth = auth
        self.limits = limits
        self.logins = logins or FailedLogins()

    async def admit(self, scope: Scope, receive: Receive,
                    send: Send) -> tuple[Receive, Send] | None:
        """The ``receive`` and ``send`` to hand on (counting the body), or None
        when this guard has answered the request itself."""
        path: str = scope["path"]
        if not (path.startswith("/api/") or path == "/metrics"):
            return receive, send
        try:
            if path == SESSION_PATH:
                send = self._count_refusals(scope, send)
                limit = self._limit(scope, path)
            else:
                _, limit = await self.check(scope)
        except ApportionError as exc:
            await answer(send, exc)
            return None
        return _Counted(receive, send, limit).pair()

    async def check(self, scope: Scope) -> tuple[Principal | None, int]:
        """Who an ``/api/`` request is (None: a join token, for its route to
        redeem) and the most its body may hold; raises what the edge answers.
        The grant fast path calls this instead of ``admit``: it reads and
        counts the body itself, without the extra layers around each message."""
        path: str = scope["path"]
        return await self._authenticate(scope, path), self._limit(scope, path)

    def _limit(self, scope: Scope, path: str) -> int:
        limit = self.limits.for_path(path)
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise BodyTooLarge(f"the body is {int(length)} bytes; this endpoint takes at "
                               f"most {limit}", limit=limit)
        return limit

    def _count_refusals(self, scope: Scope, send: Send) -> Send:
        """The route redeems the code itself: its 401 counts as a failed
        authentication of this address, and a blocked address is refused
        before the route is asked."""
        address = _client(scope)
        wait = self.logins.retry_after(address)
        if wait is not None:
            raise TooManyFailures(
                f"too many failed authentications from {address}; try again in "
                f"{int(wait) + 1} s", retry_after=int(wait) + 1)

        async def counting(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 401:
                self.logins.failed(address)
            await send(message)

        return counting

    async def _authenticate(self, scope: Scope, path: str) -> Principal | None:
        header = _header(scope, b"authorization")
        if path == REGISTER_PATH and is_join_token((header or "").partition(" ")[2].strip()):
            return None  # its route redeems it
        address = _client(scope)
        wait = self.logins.retry_after(address)
        if wait is not None and not self.auth.known(header):
            raise TooManyFailures(
                f"too many failed authentications from {address}; try again in "
                f"{int(wait) + 1} s", retry_after=int(wait) + 1)
        try:
            return await self.auth.authenticate(header)
        except Unauthenticated:
            self.logins.failed(address)
            raise


class _Counted:
    """Counts a body as it arrives; past the limit it answers 413 itself and
    fails the read, and drops whatever the application then tries to answer
    (the framework would turn a failed read into a 400)."""

    def __init__(self, receive: Receive, send: Send, limit: int) -> None:
        self._receive = receive
        self._send = send
        self.limit = limit
        self.seen = 0
        self.answered = False

    def pair(self) -> tuple[Receive, Send]:
        return self.receive, self.send

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
            if self.seen > self.limit:
                exc = body_over(self.limit)
                if not self.answered:
                    self.answered = True
                    await answer(self._send, exc)
                raise exc
        return message

    async def send(self, message: Message) -> None:
        if not self.answered:
            await self._send(message)


def body_over(limit: int) -> BodyTooLarge:
    """A body that turned out longer than ``limit`` as it arrived."""
    return BodyTooLarge(f"the body is over {limit} bytes, the most this endpoint takes",
                        limit=limit)


async def answer(send: Send, exc: ApportionError) -> None:
    """The edge's own answer to a request it refuses."""
    body = orjson.dumps(exc.to_dict())
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    for key, value in http_headers(exc).items():
        headers.append((key.lower().encode(), value.encode()))
    await send({"type": "http.response.start", "status": http_status(exc), "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")  # type: ignore[no-any-return]
    return None


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"
