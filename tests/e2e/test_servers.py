"""Several servers on one PostgreSQL: every server serves, one leads, jobs
have one truth (issue 11). Real server and agent processes on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.cluster import ServerGroup, store_violations, wait_for
from support import drop_postgres_database, postgres_database


@pytest.fixture
def group(tmp_path: Path) -> Iterator[ServerGroup]:
    url, name = postgres_database()
    g = ServerGroup(tmp_path, url, size=2).start()
    try:
        yield g
    finally:
        g.close()
        drop_postgres_database(name)


def _one_leader(g: ServerGroup) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        views = [g.cluster(i) for i, s in enumerate(g.servers) if s in g.alive()]
        leaders = {v["leader"]["server_id"] for v in views}
        if len(leaders) == 1 and None not in leaders and all(
                len([s for s in v["servers"] if s["alive"]]) == len(g.alive()) for v in views):
            return views[0]
        return None

    return wait_for("one leader that every server names", check, 30)  # type: ignore[no-any-return]


def test_every_server_answers_and_names_the_one_leader(group: ServerGroup) -> None:
    view = _one_leader(group)
    ids = {group.cluster(i)["this_server"] for i in range(2)}
    assert {s["id"] for s in view["servers"] if s["alive"]} == ids
    assert [s["leader"] for s in view["servers"]].count(True) == 1
    assert view["leader"]["epoch"] >= 1 and view["leader"]["since"].endswith("Z")
    env = {**os.environ, "APPORTION_SERVER": group.servers[1].url,
           "APPORTION_TOKEN": group.token}
    out = subprocess.run([sys.executable, "-m", "apportion.cli.main", "servers"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"leader {view['leader']['server_id']}, epoch {view['leader']['epoch']}" in out.stdout
    assert "follower" in out.stdout


def test_a_job_submitted_to_one_server_is_cancelled_through_the_other(
        group: ServerGroup, tmp_path: Path) -> None:
    _one_leader(group)
    group.add_agent("a1", servers=[0])
    with group.api(0) as a:
        job = a.post("/api/v1/jobs", json={
            "command": ["sh", "-c", "echo started; exec sleep 600"],
            "resources": {"cpu": "1"}}).json()
    wait_for("the job running", lambda: group.job(job["id"], 1)["state"] == "running", 30)
    # The log the agent shipped to server 0 is read through server 1.
    wait_for("its log through the other server", lambda: group.api(1).get(
        f"/api/v1/jobs/{job['id']}/logs").json()["data"], 30)
    asked = time.monotonic()
    with group.api(1) as b:
        r = b.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert (r.status_code, r.json()["state"]) == (200, "cancelled")
    done = wait_for("the task ended", lambda: (j := group.job(job["id"], 0))["tasks"][0][
        "state"] == "cancelled" and j, 30)
    took = time.monotonic() - asked
    alloc = group.api(1).get(f"/api/v1/allocations/{done['tasks'][0]['allocation_id']}").json()
    assert (alloc["state"], alloc["reason"]) == ("released", "cancelled")
    print(f"cancel through the other server ended the task in {took:.2f}s")


def test_the_leader_killed_another_leads_and_no_task_is_placed_twice(
        group: ServerGroup) -> None:
    first = _one_leader(group)["leader"]
    with group.api() as c:
        for name in ("n1", "n2"):
            assert c.post("/api/v1/nodes", json={"name": name, "resources": {
                "cpu": "4", "gpu": "2"}}).status_code == 201
    leader = group.leader_index()
    assert leader is not None
    group.servers[leader].kill9()
    survivor = 1 - leader
    after = wait_for("a new leader", lambda: (v := group.cluster(survivor))["leader"][
        "server_id"] not in (None, first["server_id"]) and v["leader"], 30)
    assert after["epoch"] > first["epoch"]
    ids = []
    with group.api(survivor) as c:
        for _ in range(6):
            r = c.post("/api/v1/jobs", json={"resources": {"cpu": "1", "gpu": "1"}})
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
    group.restart(leader)
    states = wait_for("four lease jobs running", lambda: [
        group.job(j)["state"] for j in ids].count("running") == 4 and ids, 30)
    assert states
    assert {k: v for k, v in store_violations(group.database_url).items() if v} == {}


def test_sixty_gpu_jobs_over_two_servers_all_succeed_through_a_kill9(
        group: ServerGroup) -> None:
    _one_leader(group)
    group.add_agent("g0", servers=[0, 1], resources="cpu=4,memory=8Gi,gpu=2")
    group.add_agent("g1", servers=[1, 0], resources="cpu=4,memory=8Gi,gpu=2")
    ids = []
    for i in range(60):
        with group.api(i % 2) as c:
            r = c.post("/api/v1/jobs", json={
                "command": ["sleep", "2"], "resources": {"cpu": "100m", "gpu": "1"},
                "restart": {"policy": "on-failure", "max_retries": 5}})
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
    wait_for("some jobs done", lambda: sum(
        group.job(j, 0)["state"] == "succeeded" for j in ids[:8]) >= 2, 60)
    group.servers[1].kill9()
    group.restart(1)

    def all_done() -> bool:
        with group.api(0) as c:
            states = [c.get(f"/api/v1/jobs/{j}").json()["state"] for j in ids]
        return all(s in ("succeeded", "failed", "cancelled") for s in states)

    wait_for("all 60 jobs ended", all_done, 180, every=1.0)
    with group.api(1) as c:
        states = [c.get(f"/api/v1/jobs/{j}").json()["state"] for j in ids]
    assert states.count("succeeded") == 60, states
    assert {k: v for k, v in store_violations(group.database_url).items() if v} == {}


def test_an_agent_moves_to_the_next_server_when_its_own_is_gone(group: ServerGroup) -> None:
    _one_leader(group)
    agent = group.add_agent("f1", servers=[0, 1])
    group.servers[0].kill9()
    with group.api(1) as c:
        job = c.post("/api/v1/jobs", json={"command": ["sh", "-c", "echo moved"],
                                           "resources": {"cpu": "1"}}).json()
    done = wait_for("the job done through server 1",
                    lambda: (j := group.job(job["id"], 1))["state"] == "succeeded" and j, 60)
    assert done["tasks"][0]["node"] == "f1"
    with group.api(1) as c:
        assert c.get(f"/api/v1/jobs/{job['id']}/logs").json()["data"] == "moved\n"
        assert c.get("/api/v1/nodes/f1").json()["state"] == "ready"
    assert "server_unreachable" in agent.log
