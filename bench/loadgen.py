"""A small HTTP/1.1 keep-alive load generator on raw asyncio streams.

httpx spends more CPU per request than the server under test does, and on a
two-core machine the generator shares the cores with the server; raw streams
keep its share small so the figures describe the server. Loopback only.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class LoadResult:
    statuses: dict[int, int] = field(default_factory=dict)
    latencies_s: list[float] = field(default_factory=list)
    wall_s: float = 0.0

    def percentile(self, p: float) -> float:
        xs = sorted(self.latencies_s)
        if not xs:
            return float("nan")
        return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]

    def summary(self) -> dict[str, float | int | dict[str, int]]:
        n = len(self.latencies_s)
        return {
            "requests": n,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "wall_s": round(self.wall_s, 3),
            "rate_per_s": round(n / self.wall_s, 1) if self.wall_s else 0.0,
            "p50_ms": round(self.percentile(50) * 1000, 2),
            "p99_ms": round(self.percentile(99) * 1000, 2),
            "max_ms": round(max(self.latencies_s, default=0) * 1000, 2),
        }


async def _worker(host: str, port: int, request: bytes, deadline: float, quota: list[int],
                  result: LoadResult) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while quota[0] > 0 and time.perf_counter() < deadline:
            quota[0] -= 1
            start = time.perf_counter()
            writer.write(request)
            status_line = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            result.latencies_s.append(time.perf_counter() - start)
            status = int(status_line.split()[1])
            result.statuses[status] = result.statuses.get(status, 0) + 1
    finally:
        writer.close()


def build_request(url: str, path: str, token: str, body: dict[str, object]) -> bytes:
    host = urlsplit(url).netloc
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


async def run_load(url: str, request: bytes, *, concurrency: int, total: int,
                   max_seconds: float) -> LoadResult:
    """Send at most ``total`` requests for at most ``max_seconds`` over
    ``concurrency`` connections."""
    parts = urlsplit(url)
    assert parts.hostname in ("127.0.0.1", "localhost", "::1"), "load goes to loopback only"
    result = LoadResult()
    quota = [total]
    start = time.perf_counter()
    deadline = start + max_seconds
    await asyncio.gather(*(
        _worker(parts.hostname, parts.port or 80, request, deadline, quota, result)
        for _ in range(concurrency)
    ))
    result.wall_s = time.perf_counter() - start
    return result
