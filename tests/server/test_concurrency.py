"""The invariant under real concurrency: many clients, real servers, loopback."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from support import ServerProcess

NODE = {"name": "n1", "resources": {"cpu": "100", "memory": "100Gi"}}
ASK = {"resources": {"cpu": "1", "memory": "1Gi"}, "node": "n1"}


async def _race(urls: list[str], token: str, total: int) -> list[int]:
    """Fire ``total`` grant requests at once, spread over ``urls``."""
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=200)
    clients = [httpx.AsyncClient(base_url=u, headers=headers, timeout=60, limits=limits)
               for u in urls]
    try:
        calls = [clients[i % len(clients)].post("/api/v1/allocations", json=ASK)
                 for i in range(total)]
        responses = await asyncio.gather(*calls)
        return [r.status_code for r in responses]
    finally:
        for c in clients:
            await c.aclose()


def _check_totals(server: ServerProcess, granted: int) -> None:
    with server.client() as c:
        # A second server learns the first one's grants within its sync interval.
        for _ in range(50):
            node = c.get("/api/v1/nodes/n1").json()
            if node["allocated_base"]["cpu"] == granted * 1000:
                break
            time.sleep(0.1)
        active = c.get("/api/v1/allocations", params={"state": "active", "limit": 1000}).json()
    assert node["allocated_base"]["cpu"] == granted * 1000
    assert node["available_base"]["cpu"] == (100 - granted) * 1000
    assert active["count"] == granted


def test_500_racing_requests_for_100_slots_grant_exactly_100(server: ServerProcess) -> None:
    with server.client() as c:
        assert c.post("/api/v1/nodes", json=NODE).status_code == 201
    statuses = asyncio.run(_race([server.url], server.token, 500))
    assert statuses.count(201) == 100
    assert statuses.count(409) == 400
    _check_totals(server, 100)


@pytest.mark.postgres
def test_two_servers_on_one_postgres_grant_exactly_100(tmp_path: Path, pg_url: str) -> None:
    a = ServerProcess(tmp_path / "a", database_url=pg_url)
    (tmp_path / "a").mkdir()
    a.start()
    b = ServerProcess(tmp_path / "b", database_url=pg_url, token=a.token)
    (tmp_path / "b").mkdir()
    b.start()
    try:
        with a.client() as c:
            assert c.post("/api/v1/nodes", json=NODE).status_code == 201
        statuses = asyncio.run(_race([a.url, b.url], a.token, 500))
        assert statuses.count(201) == 100
        assert statuses.count(409) == 400
        _check_totals(a, 100)
        _check_totals(b, 100)
    finally:
        a.stop()
        b.stop()
