"""/api/v1/jobs and /api/v1/queues over loopback against a real server, on
SQLite and on PostgreSQL: submission checks, placement through the ledger,
gangs, quotas and queue usage, explain, cancel, complete and preemption.
Jobs here have no command: pure leases.

One server per backend serves the whole module; each test keeps to a pool
of its own (nodes labelled with the test's tag, jobs constrained to it,
queues named after it) and cancels its jobs when it ends, so the tests do
not see each other's work.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from server.helpers import add_node, after_cycles, until
from support import ServerProcess

# Scheduling by priority: preemption needs it.
SERVER_ENV = {"APPORTION_STRATEGY": "priority"}


@dataclass
class Pool:
    """A test's own nodes and the constraint that keeps its jobs on them."""

    api: httpx.Client
    tag: str
    submitted: list[str] = field(default_factory=list)

    def name(self, short: str) -> str:
        return f"{self.tag}-{short}"

    def node(self, short: str, **resources: Any) -> None:
        add_node(
            self.api,
            {"name": self.name(short), "resources": resources, "labels": {"pool": self.tag}},
        )

    def job(self, **spec: Any) -> dict[str, Any]:
        return {**spec, "constraints": [f"pool={self.tag}"]}

    def submit(self, **spec: Any) -> dict[str, Any]:
        r = self.api.post("/api/v1/jobs", json=self.job(**spec))
        assert r.status_code == 201, r.text
        body: dict[str, Any] = r.json()
        self.submitted.append(body["id"])
        return body

    def allocated(self, short: str) -> dict[str, str]:
        return dict(self.api.get(f"/api/v1/nodes/{self.name(short)}").json()["allocated"])

    def allocations(self, short: str, state: str) -> list[dict[str, Any]]:
        r = self.api.get("/api/v1/allocations", params={"node": self.name(short), "state": state})
        return list(r.json()["allocations"])


@pytest.fixture
def pool(backend_shared: ServerProcess) -> Iterator[Pool]:
    with backend_shared.client() as api:
        pool = Pool(api, "t" + uuid.uuid4().hex[:8])
        yield pool
        # A job left waiting would hold up later tests' jobs: with no run time
        # estimates, nothing may start behind a job whose start cannot be planned.
        for job_id in pool.submitted:
            api.post(f"/api/v1/jobs/{job_id}/cancel")


def state_of(api: httpx.Client, job_id: str) -> str:
    return str(api.get(f"/api/v1/jobs/{job_id}").json()["state"])


def test_a_lease_job_runs_and_its_allocation_names_it(pool: Pool) -> None:
    api = pool.api
    pool.node("n1", cpu="4", memory="8Gi")
    job = pool.submit(name="lease", resources={"cpu": "2", "memory": "1Gi"})
    assert job["state"] == "pending"
    until(lambda: state_of(api, job["id"]) == "running")
    shown = api.get(f"/api/v1/jobs/{job['id']}").json()
    assert [(t["index"], t["node"], t["state"]) for t in shown["tasks"]] == [
        (0, pool.name("n1"), "running")
    ]
    alloc = api.get(f"/api/v1/allocations/{shown['tasks'][0]['allocation_id']}").json()
    assert alloc["resources"] == {"cpu": "2", "memory": "1Gi"}
    assert alloc["labels"] == {"apportion.job": job["id"], "apportion.task": "0"}
    assert pool.allocated("n1") == {"cpu": "2", "memory": "1Gi"}


def test_cancel_releases_and_a_second_cancel_is_a_no_op(pool: Pool) -> None:
    api = pool.api
    pool.node("n1", cpu="4")
    job = pool.submit(resources={"cpu": "3"})
    until(lambda: state_of(api, job["id"]) == "running")
    first = api.post(f"/api/v1/jobs/{job['id']}/cancel").json()
    assert first["state"] == "cancelled"
    assert [t["state"] for t in first["tasks"]] == ["cancelled"]
    alloc = api.get(f"/api/v1/allocations/{first['tasks'][0]['allocation_id']}").json()
    assert (alloc["state"], alloc["reason"]) == ("released", "cancelled")
    again = api.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert (again.status_code, again.json()["state"]) == (200, "cancelled")
    assert pool.allocated("n1") == {"cpu": "0"}


def test_complete_ends_a_lease_and_frees_room_for_the_next(pool: Pool) -> None:
    api = pool.api
    pool.node("n1", cpu="2")
    first = pool.submit(resources={"cpu": "2"})
    second = pool.submit(resources={"cpu": "2"})
    until(lambda: state_of(api, first["id"]) == "running")
    assert state_of(api, second["id"]) == "pending"
    done = api.post(f"/api/v1/jobs/{first['id']}/complete", json={"succeeded": True})
    assert done.json()["state"] == "succeeded"
    until(lambda: state_of(api, second["id"]) == "running")


def test_a_gang_starts_whole_or_not_at_all(pool: Pool) -> None:
    api = pool.api
    pool.node("a", cpu="2")
    pool.node("b", cpu="2")
    blocker = pool.submit(resources={"cpu": "1"})
    until(lambda: state_of(api, blocker["id"]) == "running")
    gang = pool.submit(resources={"cpu": "2"}, count=2, gang=True)
    after_cycles(api)
    assert state_of(api, gang["id"]) == "pending"
    active = pool.allocations("a", "active") + pool.allocations("b", "active")
    assert [a["labels"]["apportion.job"] for a in active] == [blocker["id"]]
    why = api.get(f"/api/v1/jobs/{gang['id']}/explain").json()
    assert why["status"] == "busy"
    api.post(f"/api/v1/jobs/{blocker['id']}/cancel")
    until(lambda: state_of(api, gang["id"]) == "running")
    tasks = api.get(f"/api/v1/jobs/{gang['id']}").json()["tasks"]
    assert sorted(t["node"] for t in tasks) == [pool.name("a"), pool.name("b")]


def test_unknown_queue_and_impossible_jobs_are_refused_at_submission(pool: Pool) -> None:
    api = pool.api
    pool.node("n1", cpu="4")
    queues = sorted(q["name"] for q in api.get("/api/v1/queues").json()["queues"])
    r = api.post("/api/v1/jobs", json=pool.job(resources={"cpu": "1"}, queue="nope"))
    assert (r.status_code, r.json()["error"]) == (422, "job_rejected")
    assert r.json()["message"] == f"queue: unknown queue 'nope' (queues: {', '.join(queues)})"
    too_big = api.post("/api/v1/jobs", json={"resources": {"cpu": "100000"}})
    assert too_big.status_code == 422
    assert too_big.json()["error"] == "job_rejected"


def test_queue_quota_is_never_exceeded(pool: Pool) -> None:
    api = pool.api
    pool.node("n1", cpu="8")
    team = pool.name("team")
    q = api.post("/api/v1/queues", json={"name": team, "quota": {"cpu": "3"}, "weight": 2})
    assert q.status_code == 201
    assert q.json()["quota"] == {"cpu": "3"}
    over = api.post("/api/v1/jobs", json=pool.job(resources={"cpu": "4"}, queue=team))
    assert over.status_code == 422
    assert over.json()["message"] == (
        f"resources.cpu: the job needs 4 in all but queue {team}'s quota is 3; it can never fit"
    )
    jobs = [pool.submit(resources={"cpu": "2"}, queue=team) for _ in range(2)]
    until(lambda: state_of(api, jobs[0]["id"]) == "running")
    after_cycles(api)
    assert state_of(api, jobs[1]["id"]) == "pending"  # 2 + 2 > 3 although the node has room
    queues = {q["name"]: q for q in api.get("/api/v1/queues").json()["queues"]}
    assert queues[team]["usage"] == {"cpu": "2"}
    assert queues[team]["weight"] == 2.0


def test_a_high_priority_job_preempts_a_preemptible_one(pool: Pool) -> None:
    api = pool.api
    pool.node("n1", cpu="4")
    low = pool.submit(resources={"cpu": "4"}, priority=0, preemptible=True)
    until(lambda: state_of(api, low["id"]) == "running")
    high = pool.submit(resources={"cpu": "4"}, priority=100)
    until(lambda: state_of(api, high["id"]) == "running")
    victim = api.get(f"/api/v1/jobs/{low['id']}").json()
    assert victim["state"] in ("preempted", "pending")
    assert victim["preemptions"] == 1
    released = pool.allocations("n1", "released")
    assert [a["reason"] for a in released] == ["preempted"]


def test_queues_are_replaced_and_updated_and_jobs_list_by_queue_and_state(pool: Pool) -> None:
    api = pool.api
    pool.node("n1", cpu="2")
    team = pool.name("team")
    made = api.post("/api/v1/queues", json={"name": team, "quota": {"cpu": "8"}, "weight": 2})
    assert made.status_code == 201
    again = api.post("/api/v1/queues", json={"name": team, "quota": {"cpu": "4"}})
    assert (again.status_code, again.json()["quota"], again.json()["weight"]) == (
        201,
        {"cpu": "4"},
        1.0,
    )
    put = api.put(
        "/api/v1/queues",
        json={
            "name": team,
            "quota": {"cpu": "4"},
            "weight": 3,
            "min_priority": 0,
            "max_priority": 10,
        },
    )
    assert put.status_code == 200, put.text
    [listed] = [q for q in api.get("/api/v1/queues").json()["queues"] if q["name"] == team]
    assert {k: listed[k] for k in ("quota", "weight", "min_priority", "max_priority")} == {
        "quota": {"cpu": "4"},
        "weight": 3.0,
        "min_priority": 0,
        "max_priority": 10,
    }

    jobs = [pool.submit(name=f"j{i}", resources={"cpu": "1"}, queue=team) for i in range(3)]
    until(lambda: [state_of(api, j["id"]) for j in jobs] == ["running", "running", "pending"])

    def names(**params: Any) -> list[str]:
        r = api.get("/api/v1/jobs", params={"queue": team, **params})
        assert r.status_code == 200, r.text
        return [j["name"] for j in r.json()["jobs"]]

    assert names() == ["j2", "j1", "j0"]  # newest first
    assert names(state="running") == ["j1", "j0"]
    assert names(state="pending") == ["j2"]
    assert names(limit=1, offset=1) == ["j1"]
    assert names(state="failed") == []
    queues = {q["name"]: q for q in api.get("/api/v1/queues").json()["queues"]}
    assert queues[team]["usage"] == {"cpu": "2"}
