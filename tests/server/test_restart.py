"""State is rebuilt from the store at start: stop the server process, start a
new one on the same store, and nodes, active allocations, device holders and
balances are all as they were."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from support import ServerProcess

NODES: list[dict[str, Any]] = [
    {
        "name": "gpu-1",
        "resources": {"cpu": "32", "memory": "256Gi", "gpu": 4},
        "devices": {
            "gpu": [
                {"id": str(i), "model": "H100", "memory": "80Gi", "uuid": f"GPU-{i:04d}"}
                for i in range(4)
            ]
        },
        "labels": {"facility": "texas-1", "type": "gpu", "gpu.model": "H100"},
        "specs": {"cpu_model": "EPYC 9654"},
    },
    {
        "name": "cpu-1",
        "resources": {"cpu": "64", "memory": "512Gi", "storage": "2T"},
        "labels": {"facility": "oslo-1", "type": "cpu"},
    },
    {
        "name": "asic-1",
        "resources": {"cpu": "4", "asic.s19": 10},
        "labels": {"facility": "texas-1", "type": "asic"},
        "state": "cordoned",
    },
]


def _snapshot(c: httpx.Client) -> dict[str, Any]:
    """Everything a restart must keep, as the API shows it."""
    return {
        "nodes": c.get("/api/v1/nodes").json(),
        "details": {n["name"]: c.get(f"/api/v1/nodes/{n['name']}").json() for n in NODES},
        "active": c.get("/api/v1/allocations", params={"state": "active", "limit": 1000}).json(),
        "released": c.get(
            "/api/v1/allocations", params={"state": "released", "limit": 1000}
        ).json(),
        "capacity": {
            g: c.get("/api/v1/capacity/summary", params={"group_by": g}).json()
            for g in ("facility", "type", "resource")
        },
        "queues": c.get("/api/v1/queues").json(),
    }


def _populate(c: httpx.Client) -> list[dict[str, Any]]:
    for node in NODES:
        assert c.post("/api/v1/nodes", json=node).status_code == 201
    # Stored in base units (millicores, bytes), read back as such: not 1000x.
    queue = {
        "name": "research",
        "quota": {"cpu": "3500m", "memory": "8Gi", "gpu": 2},
        "weight": 2,
        "max_priority": 10,
    }
    assert c.post("/api/v1/queues", json=queue).status_code == 201
    asks = [
        {
            "resources": {"cpu": "4", "memory": "32Gi", "gpu": 2},
            "node": "gpu-1",
            "owner": "alice",
            "labels": {"job": "train"},
        },
        {"resources": {"cpu": "500m", "memory": "1Gi", "gpu": 1}, "node": "gpu-1"},
        {"resources": {"cpu": "10", "memory": "100Gi", "storage": "1T"}, "owner": "bob"},
        {"resources": {"cpu": "1", "memory": "1Gi"}, "node": "cpu-1"},
    ]
    grants = []
    for ask in asks:
        r = c.post("/api/v1/allocations", json=ask)
        assert r.status_code == 201, r.text
        grants.append(r.json())
    # One released with a reason, one made on a node then deleted with force.
    assert (
        c.delete(
            f"/api/v1/allocations/{grants[1]['id']}", params={"reason": "completed"}
        ).status_code
        == 200
    )
    assert (
        c.post("/api/v1/nodes", json={"name": "tmp-1", "resources": {"cpu": "2"}}).status_code
        == 201
    )
    assert (
        c.post("/api/v1/allocations", json={"resources": {"cpu": "2"}, "node": "tmp-1"}).status_code
        == 201
    )
    assert c.delete("/api/v1/nodes/tmp-1", params={"force": "true"}).status_code == 200
    return grants


def test_a_restarted_server_has_every_node_allocation_and_balance(tmp_path: Path) -> None:
    first = ServerProcess(tmp_path).start()
    try:
        with first.client() as c:
            grants = _populate(c)
            before = _snapshot(c)
    finally:
        first.stop()
    assert before["active"]["count"] == 3
    assert before["released"]["count"] == 2
    assert before["details"]["gpu-1"]["available"] == {"cpu": "28", "memory": "224Gi", "gpu": "2"}
    research = before["queues"]["queues"][1]
    assert (research["name"], research["quota_base"]) == (
        "research",
        {"cpu": 3500, "memory": 8 * 2**30, "gpu": 2},
    )

    second = ServerProcess(tmp_path, token=first.token).start()
    try:
        with second.client() as c:
            after = _snapshot(c)
            assert after == before
            assert c.get("/api/v1/nodes/tmp-1").status_code == 404
            # APPORTION_ADMIN_TOKEN is ensured at each start, not added again.
            tokens = c.get("/api/v1/tokens").json()["tokens"]
            assert [(t["name"], t["role"]) for t in tokens] == [("admin", "admin")]
            # Balances are live, not just displayed: exactly what is free can
            # still be granted, and nothing more.
            r = c.post(
                "/api/v1/allocations",
                json={"resources": {"cpu": "28", "memory": "224Gi", "gpu": 2}, "node": "gpu-1"},
            )
            assert r.status_code == 201, r.text
            assert r.json()["devices"] == {"gpu": ["2", "3"]}
            r = c.post("/api/v1/allocations", json={"resources": {"cpu": "1m"}, "node": "gpu-1"})
            assert r.status_code == 409
            assert r.json()["message"] == (
                "Insufficient cpu on node gpu-1: 0 available, 1m requested"
            )
            # Releases after the restart free what was granted before it.
            r = c.delete(f"/api/v1/allocations/{grants[0]['id']}")
            assert (r.status_code, r.json()["state"]) == (200, "released")
            assert c.get("/api/v1/nodes/gpu-1").json()["available"] == {
                "cpu": "4",
                "memory": "32Gi",
                "gpu": "2",
            }
    finally:
        second.stop()


def test_grants_acknowledged_before_a_kill_9_survive_it(tmp_path: Path) -> None:
    first = ServerProcess(tmp_path).start()
    try:
        with first.client() as c:
            assert (
                c.post(
                    "/api/v1/nodes",
                    json={"name": "n1", "resources": {"cpu": "100", "memory": "100Gi"}},
                ).status_code
                == 201
            )
            acked = []
            for i in range(30):
                r = c.post(
                    "/api/v1/allocations",
                    json={"resources": {"cpu": "1", "memory": "1Gi"}, "owner": f"u{i % 3}"},
                )
                assert r.status_code == 201
                acked.append(r.json())
            for a in acked[:10]:
                assert c.delete(f"/api/v1/allocations/{a['id']}").status_code == 200
    finally:
        first.kill9()

    second = ServerProcess(tmp_path, token=first.token).start()
    try:
        with second.client() as c:
            node = c.get("/api/v1/nodes/n1").json()
            assert node["allocated_base"] == {"cpu": 20_000, "memory": 20 * 2**30}
            assert sorted(a["id"] for a in node["allocations"]) == sorted(
                a["id"] for a in acked[10:]
            )
            for a in acked[:10]:
                assert c.get(f"/api/v1/allocations/{a['id']}").json()["state"] == "released"
    finally:
        second.stop()


@pytest.mark.postgres
def test_a_restarted_server_on_postgresql_has_the_same_state(tmp_path: Path, pg_url: str) -> None:
    first = ServerProcess(tmp_path, database_url=pg_url).start()
    try:
        with first.client() as c:
            _populate(c)
            before = _snapshot(c)
    finally:
        first.stop()
    second = ServerProcess(tmp_path, database_url=pg_url, token=first.token).start()
    try:
        with second.client() as c:
            assert _snapshot(c) == before
    finally:
        second.stop()


def test_a_stopping_server_answers_held_agent_polls_at_once(tmp_path: Path) -> None:
    """uvicorn waits for open requests before it stops; an agent's held
    long-poll must be answered (200), not cut after the grace time with a 500."""
    server = ServerProcess(tmp_path).start()
    try:
        with server.client() as http:
            registered = http.post(
                "/api/v1/agents/register",
                json={
                    "node": {"name": "poll-1", "resources": {"cpu": "1", "memory": "1Gi"}},
                    "agent": {"id": "agent-poll-1"},
                },
            )
            assert registered.status_code == 200, registered.text
            epoch = registered.json()["epoch"]
            first = http.get(
                "/api/v1/agents/poll-1/assignments", params={"after": -1, "epoch": epoch, "wait": 0}
            ).json()
        answers: list[tuple[int, float]] = []

        def hold() -> None:
            started = time.monotonic()
            response = httpx.get(
                server.url + "/api/v1/agents/poll-1/assignments",
                params={"after": first["seq"], "epoch": epoch, "wait": 60},
                headers=server.headers,
                timeout=30,
            )
            answers.append((response.status_code, time.monotonic() - started))

        poller = threading.Thread(target=hold)
        poller.start()
        time.sleep(1.0)  # the poll is held by now
        assert server.proc is not None
        stopped_at = time.monotonic()
        server.proc.terminate()
        poller.join(20)
        # uvicorn re-raises the signal once it has stopped cleanly.
        assert server.proc.wait(20) in (0, -signal.SIGTERM)
        stop_s = time.monotonic() - stopped_at
    finally:
        server.stop()
    assert [code for code, _ in answers] == [200]
    assert stop_s < 3.0  # not the 3 s graceful timeout run out, let alone the 60 s hold
    log = (tmp_path / f"server-{server.port}.log").read_text()
    assert '"status": 500' not in log
    assert "CancelledError" not in log
