"""HTTP grant rate and latency at concurrency 32, on SQLite and PostgreSQL.

Goal (issue 2): >= 2,000 durable grants/s with p99 <= 25 ms on SQLite and
>= 1,000/s on PostgreSQL, on a 2-core machine. Every 201 counted here was
committed (SQLite synchronous=FULL: fsynced) before the answer was sent.

    .venv/bin/python bench/bench_http_grants.py [--seconds 10] [--backend sqlite|postgres|both]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

import httpx
from common import write_result
from loadgen import build_request, run_load

from support import ServerProcess, drop_postgres_database, postgres_database

NODES = 1000


def _seed(server: ServerProcess) -> None:
    with server.client() as c:
        for i in range(NODES):
            body = {"name": f"n{i:04d}", "resources": {"cpu": "1000000", "memory": "100Pi"},
                    "labels": {"facility": f"f{i % 4}"}}
            assert c.post("/api/v1/nodes", json=body).status_code == 201


def _measure(server: ServerProcess, seconds: float, concurrency: int) -> dict[str, object]:
    _seed(server)
    body = {"resources": {"cpu": "500m", "memory": "1Gi"}, "owner": "bench"}
    request = build_request(server.url, "/api/v1/allocations", server.token, body)
    asyncio.run(run_load(server.url, request, concurrency=concurrency, total=2000,
                         max_seconds=5))  # warm-up
    result = asyncio.run(run_load(server.url, request, concurrency=concurrency,
                                  total=1_000_000, max_seconds=seconds))
    summary = result.summary()
    with httpx.Client(base_url=server.url, headers=server.headers) as c:
        total = c.get("/api/v1/capacity/summary", params={"group_by": "resource"}).json()
    summary["allocated_cpu_base"] = next(
        g["resources"]["cpu"]["allocated_base"] for g in total["groups"] if g["group"] == "cpu")
    return summary


def run(backend: str, seconds: float, concurrency: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        db_name = None
        url = None
        if backend == "postgres":
            url, db_name = postgres_database()
        server = ServerProcess(Path(tmp), database_url=url).start()
        try:
            figures = _measure(server, seconds, concurrency)
        finally:
            server.stop()
            if db_name:
                drop_postgres_database(db_name)
    figures["backend"] = backend
    figures["concurrency"] = concurrency
    figures["nodes"] = NODES
    print(f"{backend:9s} grants/s={figures['rate_per_s']:8.1f}  p50={figures['p50_ms']} ms  "
          f"p99={figures['p99_ms']} ms  statuses={figures['statuses']}")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    args = parser.parse_args()
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    results = {b: run(b, args.seconds, args.concurrency) for b in backends}
    write_result("http_grants", {"goal": {"sqlite_rate": 2000, "sqlite_p99_ms": 25,
                                          "postgres_rate": 1000}, "results": results})


if __name__ == "__main__":
    main()
