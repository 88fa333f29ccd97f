"""A requests transport adapter that answers from Python instead of the
network, for SDKs built on ``requests`` (google-cloud-compute's REST
transport, the Docker SDK). Mounted on the SDK's own session, it lets the real
client build, send and parse every request; only the socket is replaced."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
from requests.adapters import BaseAdapter


@dataclass
class Call:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any


Handler = Callable[[Call], tuple[int, Any]]


@dataclass
class FakeAdapter(BaseAdapter):
    """Routes each request to ``handler(call) -> (status, json body or None)``
    and records it in ``calls``."""

    handler: Handler
    calls: list[Call] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        url = urlsplit(request.url or "")
        raw = request.body
        if isinstance(raw, bytes):
            raw = raw.decode()
        body = json.loads(raw) if raw else None
        call = Call(request.method or "", url.path, parse_qs(url.query), body)
        self.calls.append(call)
        status, reply = self.handler(call)
        response = requests.Response()
        response.status_code = status
        response.headers["Content-Type"] = "application/json"
        response._content = b"" if reply is None else json.dumps(reply).encode()
        response.url = request.url or ""
        response.request = request
        response.reason = {200: "OK", 201: "Created", 204: "No Content", 304: "Not Modified",
                           404: "Not Found", 409: "Conflict"}.get(status, "Error")
        return response

    def close(self) -> None:
        pass
