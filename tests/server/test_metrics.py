"""``GET /metrics`` against a real server: Debian's ``promtool check metrics``
accepts it, and its numbers are the ledger's (compared with what the API
says). Also: request ids in responses and in the JSON log lines."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.helpers import until
from support import ServerProcess, need_service

NODES: list[dict[str, Any]] = [
    {"name": "gpu-1", "resources": {"cpu": "32", "memory": "256Gi", "gpu": 4},
     "devices": {"gpu": [{"id": str(i), "model": "H100"} for i in range(4)]},
     "labels": {"facility": "texas-1", "type": "gpu"}},
    {"name": "cpu-1", "resources": {"cpu": "64", "memory": "128Gi"},
     "labels": {"facility": "oslo-2", "type": "cpu"}},
    {"name": "cpu-2", "resources": {"cpu": "16", "memory": "32Gi"},
     "labels": {"facility": "oslo-2", "type": "cpu"}},
    {"name": "bare", "resources": {"cpu": "2", "asic.s19": 3}},
]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(api: httpx.Client) -> tuple[str, Samples]:
    r = api.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return r.text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def api(fresh_api: httpx.Client) -> httpx.Client:
    """A server of the test's own (``conftest.py``): these tests count all it holds."""
    return fresh_api


def _seed(api: httpx.Client) -> dict[str, Any]:
    for node in NODES:
        assert api.post("/api/v1/nodes", json=node).status_code == 201, node
    grants = []
    for ask in ({"cpu": "4", "gpu": 2}, {"cpu": "8", "memory": "16Gi"}, {"cpu": "500m"},
                {"cpu": "1", "asic.s19": 2}, {"cpu": "2", "gpu": 1}, {"memory": "1Gi"}):
        r = api.post("/api/v1/allocations", json={"resources": ask, "owner": "alice"})
        assert r.status_code == 201, r.text
        grants.append(r.json()["id"])
    refused = api.post("/api/v1/allocations", json={"resources": {"cpu": "1000"}})
    assert refused.status_code == 409
    invalid = api.post("/api/v1/allocations", json={"resources": {"cpu": "lots"}})
    assert invalid.status_code == 422
    for alloc_id, reason in zip(grants[3:], ("completed", "failed", "preempted"), strict=True):
        assert api.delete(f"/api/v1/allocations/{alloc_id}",
                          params={"reason": reason}).status_code == 200
    running = api.post("/api/v1/jobs", json={"name": "lease", "resources": {"cpu": "3"}}).json()
    wide = {"name": "wide", "resources": {"cpu": "1", "gpu": 4}}  # waits: 2 GPUs are held
    waiting = api.post("/api/v1/jobs", json=wide).json()
    assert api.post("/api/v1/nodes/cpu-2/cordon").status_code == 200
    until(lambda: api.get(f"/api/v1/jobs/{running['id']}").json()["state"] == "running")
    return {"grants": grants, "running": running, "waiting": waiting}


def test_metrics_match_the_ledger_and_pass_promtool(api: httpx.Client, tmp_path: Path) -> None:
    _seed(api)
    # Counters come from the event log as the server tails it (every 0.2 s).
    until(lambda: value(scrape(api)[1], "apportion_allocations_granted_total") == 7)
    text, samples = scrape(api)

    nodes = {n["name"]: n for n in api.get("/api/v1/nodes").json()["nodes"]}
    for name, node in nodes.items():
        facility = node["labels"].get("facility", "")
        for resource, total in node["resources_base"].items():
            scale = 1000 if resource == "cpu" else 1
            unit = "cores" if resource == "cpu" else "bytes" if resource == "memory" else "units"
            key = {"node": name, "facility": facility, "resource": resource, "unit": unit}
            assert value(samples, "apportion_node_capacity", **key) == total / scale
            assert value(samples, "apportion_node_allocated", **key) == \
                node["allocated_base"].get(resource, 0) / scale

    for group in api.get("/api/v1/capacity/summary", params={"group_by": "facility"}).json()[
            "groups"]:
        facility = "" if group["group"] == "(none)" else group["group"]
        for resource, t in group["resources"].items():
            scale = 1000 if resource == "cpu" else 1
            unit = "cores" if resource == "cpu" else "bytes" if resource == "memory" else "units"
            assert value(samples, "apportion_facility_capacity", facility=facility,
                         resource=resource, unit=unit) == t["total_base"] / scale
            assert value(samples, "apportion_facility_allocated", facility=facility,
                         resource=resource, unit=unit) == t["allocated_base"] / scale
            assert value(samples, "apportion_facility_utilization_ratio", facility=facility,
                         resource=resource) == pytest.approx(t["allocated_share"], abs=1e-6)

    assert value(samples, "apportion_nodes", state="ready", health="healthy") == 3
    assert value(samples, "apportion_nodes", state="cordoned", health="healthy") == 1
    assert value(samples, "apportion_nodes", state="down", health="healthy") == 0
    active = api.get("/api/v1/allocations", params={"state": "active"}).json()["count"]
    assert value(samples, "apportion_allocations_active") == active == 4

    # 6 direct grants and the lease job's; releases by reason; one preemption.
    assert value(samples, "apportion_allocations_granted_total") == 7
    for reason in ("completed", "failed", "preempted"):
        assert value(samples, "apportion_allocations_released_total", reason=reason) == 1
    assert value(samples, "apportion_preemptions_total") == 1
    latency = "apportion_allocation_request_duration_seconds_count"
    assert value(samples, latency, outcome="granted") == 6
    assert value(samples, latency, outcome="refused") == 1
    assert value(samples, latency, outcome="rejected") == 1

    assert value(samples, "apportion_jobs", state="running") == 1
    assert value(samples, "apportion_jobs", state="pending") == 1
    assert value(samples, "apportion_queue_pending_jobs", queue="default") == 1
    assert value(samples, "apportion_queue_running_jobs", queue="default") == 1
    assert value(samples, "apportion_queue_oldest_wait_seconds", queue="default") > 0
    assert value(samples, "apportion_queue_allocated", queue="default", resource="cpu",
                 unit="cores") == 3
    assert value(samples, "apportion_queue_wait_seconds_count", queue="default") == 1
    assert value(samples, "apportion_scheduling_cycle_duration_seconds_count") >= 1
    assert ("apportion_events_total", (("kind", "job.submitted"),)) in samples

    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    if not Path(promtool).exists():
        need_service("promtool", "install Debian's prometheus package (./run test does)")
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                           text=True, timeout=30)
    (tmp_path / "metrics.txt").write_text(text)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.strip() == "" and check.stderr.strip() == "", (
        "promtool found problems:\n" + check.stdout + check.stderr)


def test_metrics_need_a_token(server: ServerProcess, api: httpx.Client) -> None:
    assert httpx.get(server.url + "/metrics").status_code == 401
    bad = httpx.get(server.url + "/metrics", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401
    viewer = api.post("/api/v1/tokens", json={"name": "prometheus", "role": "user"}).json()
    scraper = httpx.get(server.url + "/metrics",
                        headers={"Authorization": f"Bearer {viewer['token']}"})
    assert scraper.status_code == 200
    assert "apportion_nodes" in scraper.text


def test_requests_carry_ids_into_json_logs(tmp_path: Path) -> None:
    proc = ServerProcess(tmp_path, extra_env={"APPORTION_LOG_LEVEL": "INFO",
                                              "APPORTION_ACCESS_LOG": "1"}).start()
    try:
        with proc.client() as api:
            mine = api.get("/api/v1/nodes", headers={"X-Request-ID": "trace-42"})
            assert mine.headers["x-request-id"] == "trace-42"
            made = api.get("/api/v1/nodes", headers={"X-Request-ID": "bad id; " + "x" * 80})
            assert len(made.headers["x-request-id"]) == 16
            assert made.headers["x-request-id"] != mine.headers["x-request-id"]
            node = {"name": "n1", "resources": {"cpu": "1"}}
            created = api.post("/api/v1/nodes", json=node, headers={"X-Request-ID": "reg-1"})
            assert created.status_code == 201
            # Grants are answered before the middleware stack: same ids, same log.
            grant = api.post("/api/v1/allocations", json={"resources": {"cpu": "1"}},
                             headers={"X-Request-ID": "grant-1"})
            assert grant.status_code == 201
            assert grant.headers["x-request-id"] == "grant-1"
            refused = api.post("/api/v1/allocations", json={"resources": {"cpu": "1"}})
            assert refused.status_code == 409 and len(refused.headers["x-request-id"]) == 16
    finally:
        proc.stop()
    lines = [json.loads(line) for line in
             next(tmp_path.glob("server-*.log")).read_text().splitlines()
             if line.startswith("{")]
    requests = [e for e in lines if e.get("event") == "request"]
    by_id = {e["request_id"]: e for e in requests}
    assert by_id["trace-42"]["path"] == "/api/v1/nodes"
    assert by_id["trace-42"]["status"] == 200
    assert by_id["reg-1"]["method"] == "POST" and by_id["reg-1"]["status"] == 201
    assert by_id["grant-1"]["path"] == "/api/v1/allocations"
    assert by_id["grant-1"]["status"] == 201
    assert all("timestamp" in e and "level" in e for e in lines)
    # uvicorn's own lines are JSON too, from the standard library's logging.
    assert any(e.get("logger", "").startswith("uvicorn") for e in lines)


def test_hand_formatted_gauges_escape_labels_and_values() -> None:
    from apportion.service.metrics import Family, format_families

    family = Family("apportion_test", 'odd "help" \\ and\nnewline', labels=["node", "facility"])
    family.add_metric(['n"1\\x\ny', ""], float("inf"))
    family.add_metric(["n2", "texas-1"], 8589934592)
    family.add_metric(["n3", "texas-1"], 0.25)
    text = format_families([family, Family("apportion_one", "One value.", value=3)])
    parsed = {f.name: [(s.labels, s.value) for s in f.samples]
              for f in text_string_to_metric_families(text)}
    assert parsed["apportion_test"] == [
        ({"node": 'n"1\\x\ny', "facility": ""}, float("inf")),
        ({"node": "n2", "facility": "texas-1"}, 8589934592.0),
        ({"node": "n3", "facility": "texas-1"}, 0.25)]
    assert parsed["apportion_one"] == [({}, 3.0)]
