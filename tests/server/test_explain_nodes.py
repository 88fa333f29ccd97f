"""``GET /api/v1/jobs/{id}/explain?nodes=true`` through a real server: each
node with its reason now and whether it ever could, the first 50 of many."""

from __future__ import annotations

from typing import Any

import httpx

from server.helpers import add_node, until


def submit(api: httpx.Client, **spec: Any) -> dict[str, Any]:
    r = api.post("/api/v1/jobs", json=spec)
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def state_of(api: httpx.Client, job_id: str) -> str:
    return str(api.get(f"/api/v1/jobs/{job_id}").json()["state"])


def test_explain_lists_each_node_with_its_reason_and_whether_it_ever_could(
    fresh_api: httpx.Client,
) -> None:
    api = fresh_api
    add_node(api, {"name": "small", "resources": {"cpu": "2"}})
    add_node(api, {"name": "busy", "resources": {"cpu": "8"}})
    add_node(api, {"name": "off", "resources": {"cpu": "8"}})
    assert api.post("/api/v1/nodes/off/cordon").status_code == 200
    hog = submit(api, resources={"cpu": "6"})
    until(lambda: state_of(api, hog["id"]) == "running", what="the hog runs")
    job = submit(api, resources={"cpu": "4"})
    plain = api.get(f"/api/v1/jobs/{job['id']}/explain").json()
    assert "nodes" not in plain
    why = api.get(f"/api/v1/jobs/{job['id']}/explain", params={"nodes": "true"}).json()
    assert why["status"] == "busy"
    assert why["nodes"] == [
        {"node": "busy", "now": "busy", "ever": True,
         "reason": "insufficient cpu: 2 free, 4 requested", "code": "insufficient",
         "plugin": "ResourcesFit", "never": None},
        {"node": "off", "now": "condition", "ever": True, "reason": "node is cordoned",
         "code": "not_ready", "plugin": "NodeReady", "never": None},
        {"node": "small", "now": "never", "ever": False,
         "reason": "cpu: node capacity 2 < 4 requested", "code": "capacity",
         "plugin": "ResourcesFit", "never": "cpu: node capacity 2 < 4 requested"},
    ]
    assert (why["nodes_shown"], why["nodes_more"], why["nodes_more_counts"]) == (3, 0, {})


def test_explain_shows_the_first_50_nodes_and_counts_the_rest(fresh_api: httpx.Client) -> None:
    api = fresh_api
    for i in range(55):
        add_node(api, {"name": f"s{i:02}", "resources": {"cpu": "1"}})
    add_node(api, {"name": "big", "resources": {"cpu": "8"}})
    assert api.post("/api/v1/nodes/big/cordon").status_code == 200
    job = submit(api, resources={"cpu": "4"})
    why = api.get(f"/api/v1/jobs/{job['id']}/explain", params={"nodes": "true"}).json()
    assert why["nodes_total"] == 56
    assert [n["node"] for n in why["nodes"][:3]] == ["big", "s00", "s01"]
    assert why["nodes"][-1]["node"] == "s48"
    assert (why["nodes_shown"], why["nodes_more"]) == (50, 6)
    assert why["nodes_more_counts"] == {"capacity cpu": 6}
    fewer = api.get(f"/api/v1/jobs/{job['id']}/explain",
                    params={"nodes": "true", "nodes_limit": 2}).json()
    assert (fewer["nodes_shown"], fewer["nodes_more"]) == (2, 54)
    assert fewer["nodes_more_counts"] == {"capacity cpu": 54}
