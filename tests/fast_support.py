"""Asking one server two ways, for the tests of the paths served before the
framework (``server/fastsubmit.py``, ``server/fastagent.py``): through its
own entry (fast paths included) and through the framework's stack behind
the edge alone."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

Answer = tuple[int, bytes, dict[str, str]]


def framework_entry(app: FastAPI) -> Any:
    """``app`` without its fast paths: the edge, then FastAPI's own stack."""
    async def framework(scope: Scope, receive: Receive, send: Send) -> None:
        admitted = await app.state.edge.admit(scope, receive, send)
        if admitted is not None:
            await FastAPI.__call__(app, scope, *admitted)
    return framework


async def ask_entry(entry: Any, token: str, method: str, path: str, body: bytes,
                    headers: dict[str, str]) -> Answer:
    """One request to the ASGI ``entry``, with a fixed request id."""
    transport = httpx.ASGITransport(app=entry)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        r = await client.request(method, path, content=body or None, headers={
            "authorization": f"Bearer {token}", "x-request-id": "req-1", **headers})
    return r.status_code, r.content, dict(r.headers)
