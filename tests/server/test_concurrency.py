"""The invariant under real concurrency: many clients, real servers, loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest

from support import ServerProcess, drop_postgres_database, postgres_database

NODE = {"name": "n1", "resources": {"cpu": "100", "memory": "100Gi"}}
ASK = {"resources": {"cpu": "1", "memory": "1Gi"}, "node": "n1"}


async def _race(urls: list[str], token: str, total: int) -> list[int]:
    """Fire ``total`` grant requests at once, spread over ``urls``."""
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=200)
    clients = [
        httpx.AsyncClient(base_url=u, headers=headers, timeout=60, limits=limits) for u in urls
    ]
    try:
        calls = [
            clients[i % len(clients)].post("/api/v1/allocations", json=ASK) for i in range(total)
        ]
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


@pytest.fixture(scope="module")
def two_on_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProcess]]:
    """Two servers on one fresh PostgreSQL database, for the module."""
    url, name = postgres_database()
    a = ServerProcess(tmp_path_factory.mktemp("a"), database_url=url).start()
    try:
        b = ServerProcess(tmp_path_factory.mktemp("b"), database_url=url, token=a.token).start()
        try:
            yield [a, b]
        finally:
            b.stop()
    finally:
        a.stop()
        drop_postgres_database(name)


@pytest.mark.postgres
def test_two_servers_on_one_postgres_grant_exactly_100(
    two_on_postgres: list[ServerProcess],
) -> None:
    a, b = two_on_postgres
    with a.client() as c:
        assert c.post("/api/v1/nodes", json=NODE).status_code == 201
    statuses = asyncio.run(_race([a.url, b.url], a.token, 500))
    assert statuses.count(201) == 100
    assert statuses.count(409) == 400
    _check_totals(a, 100)
    _check_totals(b, 100)


async def _create_queues(servers: list[ServerProcess], names: list[str], each: int) -> list[str]:
    """Create each queue ``each`` times at once, spread over the servers; the failures."""
    clients = [httpx.AsyncClient(base_url=s.url, headers=s.headers, timeout=60) for s in servers]
    try:
        failed: list[str] = []
        for name in names:
            body = {"name": name, "quota": {"cpu": "4"}, "weight": 2}
            answers = await asyncio.gather(
                *(clients[i % len(clients)].post("/api/v1/queues", json=body) for i in range(each))
            )
            failed += [r.text for r in answers if r.status_code != 201]
        return failed
    finally:
        for c in clients:
            await c.aclose()


@pytest.mark.postgres
def test_two_servers_creating_one_queue_at_once_both_succeed(
    two_on_postgres: list[ServerProcess],
) -> None:
    # Each server's UPDATE found no row and both INSERTed: one failed, 503.
    names = [f"race-{i}" for i in range(20)]
    assert asyncio.run(_create_queues(two_on_postgres, names, 8)) == []
    for server in two_on_postgres:
        with server.client() as c:
            queues = {q["name"]: q for q in c.get("/api/v1/queues").json()["queues"]}
        assert [(queues[n]["quota"], queues[n]["weight"]) for n in names] == [
            ({"cpu": "4"}, 2.0)
        ] * 20
