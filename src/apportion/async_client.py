"""The asynchronous twin of ``client.Client``, for the agent: the same calls
(``client.Api``, each a ``Call`` defined once) sent over an
``httpx.AsyncClient``, with the same errors: ``ClientError`` for an error
answer, ``TransportError`` (``ConnectError`` when unreachable) for none.

httpx is imported here only, so the CLI, which imports ``client``, never
pays for it. A transport may be handed in: the agent's failover across
servers (``agent/transport.py``) is one, a test's stand-in server another.
The checkpoint transfers stream, with their paths from ``client``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from apportion.client import (
    Api,
    Call,
    ClientError,
    ConnectError,
    TransportError,
    _error_of,
    agent_path,
    checkpoint_path,
)

_NO_ANSWER = (httpx.ConnectError, httpx.ConnectTimeout)


def remember_missing_sniffio() -> bool:
    """Where ``sniffio`` is not installed (anyio 4 no longer needs it), say
    so once in ``sys.modules``; True when it is missing.

    httpcore imports it afresh at each lock and event it makes (about one a
    request), and a failed import is not remembered: each searched all of
    ``sys.path`` again, 70 us of the agent's CPU a call. A ``None`` entry
    makes the import fail at once with the same ``ModuleNotFoundError``,
    which httpcore, anyio and httpx each take as "not installed"."""
    if "sniffio" in sys.modules:
        return sys.modules["sniffio"] is None
    if importlib.util.find_spec("sniffio") is not None:
        return False
    sys.modules["sniffio"] = None  # type: ignore[assignment]
    return True


remember_missing_sniffio()


def _transport_error(exc: httpx.HTTPError) -> TransportError:
    kind = ConnectError if isinstance(exc, _NO_ANSWER) else TransportError
    return kind(str(exc) or type(exc).__name__)


@dataclass
class Download:
    """A streamed answer: its declared length, then its bytes as they arrive."""

    length: int | None
    response: httpx.Response

    async def chunks(self, size: int) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.response.aiter_bytes(size):
                yield chunk
        except httpx.HTTPError as exc:
            raise _transport_error(exc) from exc


class AsyncClient(Api[Any]):
    """``Api``'s calls over httpx; each method returns an awaitable of the
    result ``Client`` would return."""

    def __init__(self, server: str, token: str | None, *, timeout: float = 30.0,
                 read_timeout: float | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(
            base_url=server.rstrip("/"), headers=headers, transport=transport,
            timeout=httpx.Timeout(timeout, read=read_timeout or timeout))

    def set_token(self, token: str) -> None:
        """Send ``token`` from now on (a join token was exchanged for it)."""
        self._http.headers["Authorization"] = f"Bearer {token}"

    async def aclose(self) -> None:
        await self._http.aclose()

    def _call(self, call: Call) -> Any:
        return self._send(call)

    async def _send(self, call: Call) -> Any:
        data, headers = call.body()
        try:
            response = await self._http.request(call.method, call.target(), content=data,
                                                headers=headers)
        except httpx.HTTPError as exc:
            raise _transport_error(exc) from exc
        return call.answer(response.status_code, response.content)

    # -- streamed transfers -------------------------------------------------------

    async def put_checkpoint(self, node: str, task_id: str, chunks: AsyncIterable[bytes],
                             size: int) -> Any:
        """Upload a task's checkpoint (a tar of ``size`` bytes), read as it is sent."""
        call = Call("PUT", agent_path(node, f"/tasks/{task_id}/checkpoint"))
        try:
            response = await self._http.put(
                call.target(), content=chunks,
                headers={"Content-Type": "application/x-tar", "Content-Length": str(size)})
        except httpx.HTTPError as exc:
            raise _transport_error(exc) from exc
        return call.answer(response.status_code, response.content)

    @contextlib.asynccontextmanager
    async def checkpoint(self, task_id: str) -> AsyncIterator[Download]:
        """The checkpoint a task resumes from, streamed; an error answer raises
        ``ClientError`` before any byte is read."""
        try:
            async with self._http.stream("GET", checkpoint_path(task_id)) as response:
                if response.status_code >= 400:
                    raise _error_of(response.status_code, await response.aread())
                declared = response.headers.get("content-length")
                yield Download(int(declared) if declared and declared.isdigit() else None,
                               response)
        except httpx.HTTPError as exc:
            raise _transport_error(exc) from exc


__all__ = ["AsyncClient", "ClientError", "ConnectError", "Download", "TransportError"]
