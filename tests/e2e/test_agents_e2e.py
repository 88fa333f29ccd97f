"""Agents end to end: real server and agent processes on loopback run real
task processes; every test ends every process it started (see ``Cluster``)."""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from e2e.cluster import Cluster, payload, wait_for

pytestmark = pytest.mark.slow


def _records(out: Path) -> dict[str, dict[str, Any]]:
    return {p.name[:-5]: json.loads(p.read_text()) for p in out.glob("*.json")
            if not p.name.endswith(".start.json")}


def _released_once(cluster: Cluster, alloc_ids: set[str]) -> Counter[str]:
    releases = Counter(e["data"]["id"] for e in cluster.events("allocation.released"))
    return Counter({a: releases[a] for a in alloc_ids})


def test_fifty_jobs_on_three_agents_run_where_their_allocations_say(
    cluster: Cluster, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for name in ("node-a", "node-b", "node-c"):
        cluster.add_agent(name, "cpu=4,memory=8Gi,gpu=2")
    rng = random.Random(7)
    ids = []
    for i in range(50):
        resources: dict[str, Any] = {"cpu": rng.choice(["500m", "1", "2"]),
                                     "memory": rng.choice(["256Mi", "1Gi", "2Gi"])}
        gpus = rng.choice([0, 0, 1, 1, 2])
        if gpus:
            resources["gpu"] = gpus
        seconds = rng.choice([0.1, 0.3, 0.6])
        ids.append(cluster.submit(payload("record", out, seconds), resources=resources,
                                  name=f"mix-{i}")["id"])
    jobs = cluster.wait_jobs(ids, timeout=90)
    assert Counter(j["state"] for j in jobs.values()) == {"succeeded": 50}

    records = _records(out)
    by_device: dict[tuple[str, str], list[tuple[float, float, str]]] = defaultdict(list)
    allocations = set()
    for job_id in ids:
        [task] = cluster.job(job_id)["tasks"]
        record = records[task["id"]]
        alloc = cluster.allocation(task["allocation_id"])
        allocations.add(alloc["id"])
        # It ran on the node and devices its allocation names, with exactly
        # the resources granted.
        assert (record["node"], record["allocation"]) == (alloc["node"], alloc["id"])
        gpus = alloc["devices"].get("gpu", [])
        assert record["cuda"] == ",".join(gpus)
        assert {r: [d["id"] for d in ds] for r, ds in record["devices"].items()} == \
            alloc["devices"]
        assert record["resources"] == alloc["resources"]
        assert (alloc["state"], alloc["reason"]) == ("released", "completed")
        assert record["overlap"] is None
        for gpu in gpus:
            by_device[(alloc["node"], gpu)].append((record["start"], record["end"], job_id))
    # No device was used by two processes at any time.
    for device, spans in by_device.items():
        spans.sort()
        for (_, end, a), (start, _, b) in itertools.pairwise(spans):
            assert end <= start, f"{a} and {b} overlapped on {device}"
    assert len({r["node"] for r in records.values()}) == 3
    assert set(_released_once(cluster, allocations).values()) == {1}


def test_kill9_of_an_agent_requeues_its_tasks_elsewhere_as_node_lost(
    cluster: Cluster, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    doomed = cluster.add_agent("doomed", "cpu=4,memory=8Gi", stop_after_disconnect=1.5)
    restart = {"policy": "on-failure", "max_retries": 2, "backoff": 0.1}
    # The first attempts hold until they are stopped: on a loaded machine a
    # short one could end before the kill and leave a job with one attempt.
    ids = [cluster.submit(payload("record", out, "600,0.5"),
                          resources={"cpu": "1", "memory": "256Mi"},
                          restart=restart)["id"] for _ in range(3)]
    wait_for("three tasks running on doomed",
             lambda: all(cluster.job(j)["state"] == "running" for j in ids), 60)
    cluster.add_agent("spare", "cpu=4,memory=8Gi")
    doomed.kill9()

    jobs = cluster.wait_jobs(ids, timeout=40)
    assert {j["state"] for j in jobs.values()} == {"succeeded"}
    assert cluster.wait_node("doomed", "down")["state"] == "down"
    for job_id in ids:
        first, second = sorted(cluster.job(job_id)["tasks"], key=lambda t: t["attempt"])
        assert (first["node"], first["state"]) == ("doomed", "lost")
        assert (second["node"], second["state"]) == ("spare", "succeeded")
        lost = cluster.allocation(first["allocation_id"])
        assert (lost["state"], lost["reason"]) == ("released", "node_lost")
        assert _records(out)[second["id"]]["overlap"] is None
        assert first["id"] not in _records(out)  # stopped, never ran to its end
    # The orphaned processes were stopped by the dead agent's fence, not left running.
    wait_for("the fence to stop doomed's tasks",
             lambda: not [p for p in doomed.task_pids() if _alive(p)], 30)


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_kill9_of_the_server_loses_nothing_and_releases_each_allocation_once(
    tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    # Slow node-loss timing: the server is away longer than a heartbeat or two.
    cluster = Cluster(tmp_path, server_env={"APPORTION_NODE_DOWN_AFTER": "30",
                                            "APPORTION_POLL_HOLD": "5"}).start()
    try:
        for name in ("node-a", "node-b"):
            cluster.add_agent(name, "cpu=4,memory=8Gi", stop_after_disconnect=30)
        ids = [cluster.submit(payload("record", out, s), resources={"cpu": "1",
                                                                     "memory": "256Mi"})["id"]
               for s in (4.5, 5, 5.5, 6, 6.5, 7, 0.5, 1, 1.5, 2)]
        # Killed once six have started and the long ones still run; counting
        # only "running" could wait forever on a machine slow enough that the
        # short tasks end before the last long one starts.
        wait_for("six tasks started", lambda: sum(
            cluster.job(j)["state"] in ("running", "succeeded") for j in ids) >= 6, 60)
        assert cluster.server is not None
        cluster.server.kill9()
        cluster.restart_server()
        jobs = cluster.wait_jobs(ids, timeout=60)
        assert {j["state"] for j in jobs.values()} == {"succeeded"}
        allocations = {t["allocation_id"] for j in ids for t in cluster.job(j)["tasks"]}
        assert len(allocations) == len(ids)  # each ran once: nothing was started twice
        assert set(_released_once(cluster, allocations).values()) == {1}
        for alloc_id in allocations:
            assert cluster.allocation(alloc_id)["reason"] == "completed"
        assert all(r["overlap"] is None for r in _records(out).values())
    finally:
        cluster.close()


def test_a_task_over_its_memory_is_stopped_and_reported_so(cluster: Cluster) -> None:
    cluster.add_agent("node-a", "cpu=2,memory=4Gi")
    job = cluster.submit(payload("hog", 300, 30), resources={"cpu": "1", "memory": "64Mi"})
    [ended] = cluster.wait_jobs([job["id"]], timeout=30).values()
    assert ended["state"] == "failed"
    assert "memory limit exceeded" in ended["reason"]
    assert ended["exit_code"] == 137
    [task] = cluster.job(job["id"])["tasks"]
    assert task["state"] == "failed"
    assert cluster.allocation(task["allocation_id"])["reason"] == "failed"


def test_a_preempted_job_resumes_from_its_checkpoint(cluster: Cluster, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    cluster.add_agent("node-a", "cpu=2,memory=4Gi,gpu=1")
    low = cluster.submit(payload("counter", out, 60, 0.05), preemptible=True, priority=0,
                         resources={"cpu": "1", "memory": "128Mi", "gpu": 1})
    wait_for("the counter to pass 10", lambda: _count(tmp_path, cluster, low["id"]) >= 10, 30)
    high = cluster.submit(payload("record", out, 0.5), priority=10,
                          resources={"cpu": "1", "memory": "128Mi", "gpu": 1})
    jobs = cluster.wait_jobs([high["id"], low["id"]], timeout=60)
    assert {j["state"] for j in jobs.values()} == {"succeeded"}
    tasks = sorted(cluster.job(low["id"])["tasks"], key=lambda t: t["attempt"])
    assert [t["state"] for t in tasks] == ["preempted", "succeeded"]
    assert cluster.allocation(tasks[0]["allocation_id"])["reason"] == "preempted"
    assert jobs[low["id"]]["preemptions"] == 1
    done = json.loads((out / "done.json").read_text())
    assert done["count"] == 60
    assert done["first"] >= 10 and done["resume"] is not None
    # The high-priority job got the GPU, and ran on it, only after the victim left it.
    [h] = cluster.job(high["id"])["tasks"]
    victim = cluster.allocation(tasks[0]["allocation_id"])
    switched = cluster.allocation(h["allocation_id"])
    assert switched["devices"] == victim["devices"] == {"gpu": ["0"]}
    assert _ts(switched["created_at"]) >= _ts(victim["released_at"])
    assert _records(out)[h["id"]]["start"] >= _ts(victim["released_at"])
    with cluster.api as c:
        log = c.get(f"/api/v1/jobs/{low['id']}/logs").json()
        # A checkpoint is served to the node whose task resumes from it: not
        # to any other agent (issue 17, finding 4), while an admin may read it.
        other = c.post("/api/v1/tokens", json={"name": "node-b", "role": "agent"}).json()
        saved = f"/api/v1/agents/checkpoints/{tasks[0]['id']}"
        assert c.get(saved).status_code == 200
    assert "counted to 60" in log["data"]
    assert cluster.server is not None
    with cluster.server.client(other["token"]) as stranger:
        r = stranger.get(saved)
    assert r.status_code == 404, r.text
    assert "no task on node node-b resumes from" in r.json()["message"]


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _count(tmp_path: Path, cluster: Cluster, job_id: str) -> int:
    for record in (tmp_path / "agents").glob("*/sandbox/*/checkpoint/counter"):
        try:
            return int(record.read_text())
        except ValueError:
            return 0
    return 0
