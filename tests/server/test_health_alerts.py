"""A node made hot by a test agent's fake sensor readings: degraded, then
unhealthy (no new work), one alert raised, and resolved when it cools."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.helpers import Serve, after_cycles, config_env, until

CONFIG = """
[alerts]
interval_s = 0.2
capacity_threshold = 1.0
"""


@pytest.fixture
def api(serve: Serve, tmp_path: Path) -> Iterator[httpx.Client]:
    with serve(config_env(tmp_path, CONFIG)).client() as client:
        yield client


def beat(api: httpx.Client, temperature: float) -> None:
    usage = {"memory_percent": 40.0, "disk_percent": 10.0,
             "gpus": [{"index": 0, "uuid": "GPU-0", "temperature_c": temperature,
                       "utilization_percent": 50.0}]}
    r = api.post("/api/v1/agents/n1/heartbeat", json={"agent_id": "test-agent", "usage": usage})
    assert r.status_code == 200, r.text


def health(api: httpx.Client) -> dict[str, Any]:
    body: dict[str, Any] = api.get("/api/v1/health-checks/n1").json()
    return body


def test_hot_node_goes_degraded_then_unhealthy_and_one_alert_resolves(api: httpx.Client) -> None:
    node = {"name": "n1", "resources": {"cpu": "4"},
            "devices": {"gpu": [{"id": "0", "model": "H100", "uuid": "GPU-0"}]}}
    assert api.post("/api/v1/nodes", json=node).status_code == 201
    beat(api, 70)
    assert health(api)["status"] == "healthy"

    beat(api, 85)
    report = health(api)
    assert report["status"] == "degraded"
    assert [r["rule"] for r in report["reasons"]] == ["temperature"]
    beat(api, 95)
    assert health(api)["status"] == "unhealthy"
    assert api.get("/api/v1/nodes/n1").json()["health"] == "unhealthy"

    job = api.post("/api/v1/jobs", json={"resources": {"cpu": "1", "gpu": 1}}).json()
    after_cycles(api)  # cycles with the job pending: an unhealthy node takes no work
    assert api.get(f"/api/v1/jobs/{job['id']}").json()["state"] == "pending"
    firing = until(lambda: api.get("/api/v1/alerts", params={"state": "firing"}).json()["alerts"])
    assert [(a["rule"], a["labels"], a["severity"]) for a in firing] == [
        ("node_health", {"node": "n1"}, "critical")]

    beat(api, 85)  # cooler, but above 90 - 5: still held in the warning band
    assert health(api)["status"] == "degraded"
    beat(api, 70)
    assert health(api)["status"] == "healthy"
    until(lambda: api.get(f"/api/v1/jobs/{job['id']}").json()["state"] == "running")
    resolved = until(lambda: api.get("/api/v1/alerts",
                                     params={"state": "resolved"}).json()["alerts"])
    assert [(a["rule"], a["fingerprint"]) for a in resolved] == [
        ("node_health", firing[0]["fingerprint"])]
    # The running job holds the node's one GPU, so capacity_utilization may
    # fire by now (rightly); what must be gone is the health alert.
    still = api.get("/api/v1/alerts", params={"state": "firing"}).json()["alerts"]
    assert [a["rule"] for a in still if a["rule"] != "capacity_utilization"] == []
    changes = [c["current"] for c in reversed(health(api)["recent_changes"])]
    assert changes == ["degraded", "unhealthy", "degraded", "healthy"]
