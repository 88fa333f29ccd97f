"""/api/v1/jobs and /api/v1/queues over loopback against a real server:
submission checks, placement through the ledger, gangs, quotas, explain,
cancel, complete and preemption. Jobs here have no command: pure leases."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from server.helpers import Serve, add_node, until


@pytest.fixture
def api(serve: Serve) -> Iterator[httpx.Client]:
    """A server of the test's own, scheduling by priority (preemption needs it)."""
    with serve({"APPORTION_STRATEGY": "priority"}).client() as client:
        yield client


def node(api: httpx.Client, name: str, **resources: Any) -> None:
    add_node(api, {"name": name, "resources": resources})


def submit(api: httpx.Client, **spec: Any) -> dict[str, Any]:
    r = api.post("/api/v1/jobs", json=spec)
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def state_of(api: httpx.Client, job_id: str) -> str:
    return str(api.get(f"/api/v1/jobs/{job_id}").json()["state"])


def test_a_lease_job_runs_and_its_allocation_names_it(api: httpx.Client) -> None:
    node(api, "n1", cpu="4", memory="8Gi")
    job = submit(api, name="lease", resources={"cpu": "2", "memory": "1Gi"})
    assert job["state"] == "pending"
    until(lambda: state_of(api, job["id"]) == "running")
    shown = api.get(f"/api/v1/jobs/{job['id']}").json()
    assert [(t["index"], t["node"], t["state"]) for t in shown["tasks"]] == [(0, "n1", "running")]
    alloc = api.get(f"/api/v1/allocations/{shown['tasks'][0]['allocation_id']}").json()
    assert alloc["resources"] == {"cpu": "2", "memory": "1Gi"}
    assert alloc["labels"] == {"apportion.job": job["id"], "apportion.task": "0"}
    assert api.get("/api/v1/nodes/n1").json()["allocated"] == {"cpu": "2", "memory": "1Gi"}


def test_cancel_releases_and_a_second_cancel_is_a_no_op(api: httpx.Client) -> None:
    node(api, "n1", cpu="4")
    job = submit(api, resources={"cpu": "3"})
    until(lambda: state_of(api, job["id"]) == "running")
    first = api.post(f"/api/v1/jobs/{job['id']}/cancel").json()
    assert first["state"] == "cancelled"
    assert [t["state"] for t in first["tasks"]] == ["cancelled"]
    alloc = api.get(f"/api/v1/allocations/{first['tasks'][0]['allocation_id']}").json()
    assert (alloc["state"], alloc["reason"]) == ("released", "cancelled")
    again = api.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert (again.status_code, again.json()["state"]) == (200, "cancelled")
    assert api.get("/api/v1/nodes/n1").json()["allocated"] == {"cpu": "0"}


def test_complete_ends_a_lease_and_frees_room_for_the_next(api: httpx.Client) -> None:
    node(api, "n1", cpu="2")
    first = submit(api, resources={"cpu": "2"})
    second = submit(api, resources={"cpu": "2"})
    until(lambda: state_of(api, first["id"]) == "running")
    assert state_of(api, second["id"]) == "pending"
    done = api.post(f"/api/v1/jobs/{first['id']}/complete", json={"succeeded": True})
    assert done.json()["state"] == "succeeded"
    until(lambda: state_of(api, second["id"]) == "running")


def test_a_gang_starts_whole_or_not_at_all(api: httpx.Client) -> None:
    node(api, "a", cpu="2")
    node(api, "b", cpu="2")
    blocker = submit(api, resources={"cpu": "1"})
    until(lambda: state_of(api, blocker["id"]) == "running")
    gang = submit(api, resources={"cpu": "2"}, count=2, gang=True)
    time.sleep(1.5)  # several scheduling cycles
    assert state_of(api, gang["id"]) == "pending"
    active = api.get("/api/v1/allocations", params={"state": "active"}).json()["allocations"]
    assert [a["labels"]["apportion.job"] for a in active] == [blocker["id"]]
    why = api.get(f"/api/v1/jobs/{gang['id']}/explain").json()
    assert why["status"] == "busy"
    api.post(f"/api/v1/jobs/{blocker['id']}/cancel")
    until(lambda: state_of(api, gang["id"]) == "running")
    tasks = api.get(f"/api/v1/jobs/{gang['id']}").json()["tasks"]
    assert sorted(t["node"] for t in tasks) == ["a", "b"]


def test_unknown_queue_and_impossible_jobs_are_refused_at_submission(api: httpx.Client) -> None:
    node(api, "n1", cpu="4")
    r = api.post("/api/v1/jobs", json={"resources": {"cpu": "1"}, "queue": "nope"})
    assert (r.status_code, r.json()["error"]) == (422, "job_rejected")
    assert r.json()["message"] == "queue: unknown queue 'nope' (queues: default)"
    too_big = api.post("/api/v1/jobs", json={"resources": {"cpu": "8"}})
    assert too_big.status_code == 422
    assert too_big.json()["error"] == "job_rejected"


def test_queue_quota_is_never_exceeded(api: httpx.Client) -> None:
    node(api, "n1", cpu="8")
    q = api.post("/api/v1/queues", json={"name": "team-a", "quota": {"cpu": "3"}, "weight": 2})
    assert q.status_code == 201
    assert q.json()["quota"] == {"cpu": "3"}
    over = api.post("/api/v1/jobs", json={"resources": {"cpu": "4"}, "queue": "team-a"})
    assert over.status_code == 422
    assert over.json()["message"] == (
        "resources.cpu: the job needs 4 in all but queue team-a's quota is 3; it can never fit")
    jobs = [submit(api, resources={"cpu": "2"}, queue="team-a") for _ in range(2)]
    until(lambda: state_of(api, jobs[0]["id"]) == "running")
    time.sleep(1.0)
    assert state_of(api, jobs[1]["id"]) == "pending"  # 2 + 2 > 3 although the node has room
    queues = {q["name"]: q for q in api.get("/api/v1/queues").json()["queues"]}
    assert queues["team-a"]["usage"] == {"cpu": "2"}
    assert queues["team-a"]["weight"] == 2.0


def test_a_high_priority_job_preempts_a_preemptible_one(api: httpx.Client) -> None:
    node(api, "n1", cpu="4")
    low = submit(api, resources={"cpu": "4"}, priority=0, preemptible=True)
    until(lambda: state_of(api, low["id"]) == "running")
    high = submit(api, resources={"cpu": "4"}, priority=100)
    until(lambda: state_of(api, high["id"]) == "running")
    victim = api.get(f"/api/v1/jobs/{low['id']}").json()
    assert victim["state"] in ("preempted", "pending")
    assert victim["preemptions"] == 1
    released = api.get("/api/v1/allocations", params={"state": "released"}).json()
    assert [a["reason"] for a in released["allocations"]] == ["preempted"]
