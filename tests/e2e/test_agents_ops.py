"""Agents in operation: cancel, restart policies, drain, agent restarts,
partitions, rescans, and the CLI that follows a job. Real processes on
loopback, as in test_agents_e2e.py; cancel on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from e2e.cluster import Cluster, Proxy, payload, wait_for

pytestmark = pytest.mark.slow


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _agent_of(cluster: Cluster, node: str) -> str | None:
    with cluster.api as c:
        agent = c.get(f"/api/v1/nodes/{node}").json()["specs"].get("agent") or {}
    return agent.get("id")  # type: ignore[no-any-return]


def _running_task(cluster: Cluster, job_id: str) -> dict[str, Any] | None:
    tasks = [t for t in cluster.job(job_id)["tasks"] if t["state"] == "running"]
    return tasks[-1] if tasks else None


def test_cancel_stops_the_process_then_releases_the_allocation(backend_cluster: Cluster) -> None:
    cluster = backend_cluster
    agent = cluster.add_agent("node-a", "cpu=2,memory=4Gi")
    job = cluster.submit(payload("sleeper", 60))
    task = wait_for("running", lambda: _running_task(cluster, job["id"]), 20)
    [pid] = agent.task_pids()
    with cluster.api as c:
        answer = c.post(f"/api/v1/jobs/{job['id']}/cancel").json()
    assert answer["state"] == "cancelled"
    wait_for(
        "the task to end", lambda: cluster.job(job["id"])["tasks"][0]["state"] == "cancelled", 20
    )
    alloc = cluster.allocation(task["allocation_id"])
    assert (alloc["state"], alloc["reason"]) == ("released", "cancelled")
    assert not _alive(pid)
    # The agent's view: live usage in heartbeats, and no task left running.
    with cluster.api as c:
        status = wait_for(
            "a heartbeat without the task",
            lambda: (
                (s := c.get("/api/v1/agents/node-a").json())["usage"].get("running_tasks") == []
                and s
            ),
            10,
        )
    assert status["usage"]["memory_total"] > 0 and "cpu_percent" in status["usage"]


def test_on_failure_retries_with_backoff_then_fails_with_the_exit_code(cluster: Cluster) -> None:
    cluster.add_agent("node-a", "cpu=2,memory=4Gi")
    job = cluster.submit(
        ["sh", "-c", "echo attempt $APPORTION_ATTEMPT; exit 3"],
        restart={"policy": "on-failure", "max_retries": 2, "backoff": 0.1},
    )
    [ended] = cluster.wait_jobs([job["id"]], timeout=30).values()
    assert (ended["state"], ended["exit_code"]) == ("failed", 3)
    tasks = cluster.job(job["id"])["tasks"]
    assert sorted(t["attempt"] for t in tasks) == [1, 2, 3]
    assert {(t["state"], t["exit_code"]) for t in tasks} == {("failed", 3)}
    never = cluster.submit(["sh", "-c", "exit 4"])
    [ended] = cluster.wait_jobs([never["id"]], timeout=30).values()
    assert (ended["state"], ended["exit_code"], ended["attempts"]) == ("failed", 4, 1)


def test_drain_preempts_after_its_deadline_and_the_task_runs_elsewhere(
    cluster: Cluster, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    cluster.add_agent("node-a", "cpu=2,memory=4Gi")
    job = cluster.submit(payload("record", out, 6))
    wait_for("running on node-a", lambda: _running_task(cluster, job["id"]), 20)
    cluster.add_agent("node-b", "cpu=2,memory=4Gi")
    with cluster.api as c:
        drained = c.post("/api/v1/nodes/node-a/drain", json={"deadline": 0.5}).json()
    assert (drained["state"], drained["running_tasks"]) == ("draining", 1)
    [ended] = cluster.wait_jobs([job["id"]], timeout=30).values()
    assert ended["state"] == "succeeded"
    first, second = sorted(cluster.job(job["id"])["tasks"], key=lambda t: t["attempt"])
    assert (first["node"], first["state"], second["node"]) == ("node-a", "preempted", "node-b")
    with cluster.api as c:
        assert c.get("/api/v1/nodes/node-a").json()["state"] == "draining"
        assert c.post("/api/v1/nodes/node-a/uncordon").json()["state"] == "ready"
        assert c.post("/api/v1/nodes/node-a/cordon").json()["state"] == "cordoned"


def test_a_restarted_agent_adopts_its_running_tasks_and_reports_them_once(
    cluster: Cluster, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    agent = cluster.add_agent("node-a", "cpu=2,memory=4Gi", stop_after_disconnect=20)
    job = cluster.submit(payload("record", out, 4))
    wait_for("running", lambda: _running_task(cluster, job["id"]), 20)
    [pid] = agent.task_pids()
    agent.kill9()
    assert _alive(pid)  # tasks outlive their agent
    agent.start()
    [ended] = cluster.wait_jobs([job["id"]], timeout=30).values()
    assert ended["state"] == "succeeded" and ended["attempts"] == 1
    assert "task_adopted" in agent.log
    [task] = cluster.job(job["id"])["tasks"]
    released = [
        e for e in cluster.events("allocation.released") if e["data"]["id"] == task["allocation_id"]
    ]
    assert [e["data"]["reason"] for e in released] == ["completed"]


def test_a_partitioned_agent_stops_its_tasks_before_they_run_elsewhere(
    cluster: Cluster, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    assert cluster.server is not None
    proxy = Proxy(cluster.server.port)
    try:
        cut_off = cluster.add_agent("island", "cpu=2,memory=4Gi", stop_after_disconnect=1.5)
        first = _agent_of(cluster, "island")
        cut_off.url = proxy.url
        cut_off.stop()
        cut_off.start()
        # Work is placed once the agent behind the proxy has registered: a
        # restart slower than NODE_DOWN_AFTER (2 s, on a loaded machine) would
        # otherwise lose the first attempt to the restart, not the partition.
        wait_for("island's new agent", lambda: _agent_of(cluster, "island") not in (None, first))
        cluster.wait_node("island", "ready")
        job = cluster.submit(
            payload("record", out, 8), restart={"policy": "on-failure", "max_retries": 1}
        )
        wait_for("running on island", lambda: _running_task(cluster, job["id"]), 20)
        [pid] = cut_off.task_pids()
        cluster.add_agent("mainland", "cpu=2,memory=4Gi")
        proxy.cut()
        cluster.wait_node("island", "suspect", timeout=10)
        cluster.wait_node("island", "down", timeout=10)
        assert not _alive(pid)  # the agent fenced it before the server gave it away
        second = wait_for("running on mainland", lambda: _running_task(cluster, job["id"]), 20)
        assert second["node"] == "mainland"
        proxy.heal()
        cluster.wait_node("island", "ready", timeout=20)
        [ended] = cluster.wait_jobs([job["id"]], timeout=30).values()
        assert ended["state"] == "succeeded"
        first = min(cluster.job(job["id"])["tasks"], key=lambda t: t["attempt"])
        assert (first["node"], first["state"]) == ("island", "lost")
        assert cluster.allocation(first["allocation_id"])["reason"] == "node_lost"
        records = [json.loads(p.read_text()) for p in out.glob("*.start.json")]
        assert len(records) == 2 and all(r["overlap"] is None for r in records)
    finally:
        proxy.close()


def test_rescan_on_demand_and_an_allocated_device_that_vanished(
    cluster: Cluster, tmp_path: Path
) -> None:
    devices = tmp_path / "devices.toml"
    devices.write_text(
        "".join(f'[[device]]\nresource = "asic.s19"\nid = "s19-{i}"\n' for i in range(3))
    )
    cluster.add_agent("miner", "cpu=2,memory=4Gi", extra=["--devices", str(devices)])
    job = cluster.submit(payload("sleeper", 60), resources={"cpu": "500m", "asic.s19": 1})
    task = wait_for("running", lambda: _running_task(cluster, job["id"]), 20)
    held = cluster.allocation(task["allocation_id"])["devices"]["asic.s19"]
    assert held == ["s19-0"]
    # s19-0 (allocated) and s19-2 (free) disappear from the machine.
    devices.write_text('[[device]]\nresource = "asic.s19"\nid = "s19-1"\n')
    with cluster.api as c:
        assert c.post("/api/v1/nodes/miner/rescan").status_code == 200
        node = wait_for(
            "the rescan to register",
            lambda: (
                (n := c.get("/api/v1/nodes/miner").json())["resources"]["asic.s19"] == "2" and n
            ),
            20,
        )
    ids = {d["id"]: d for d in node["devices"]["asic.s19"]}
    assert set(ids) == {"s19-0", "s19-1"}  # the allocated one stays until released
    assert ids["s19-0"]["attrs"]["lost"] is True and ids["s19-0"]["allocation_id"]
    assert node["allocated_base"]["asic.s19"] == 1
    # Events are written after the node change they describe, not with it.
    [lost] = wait_for("the device_lost event", lambda: cluster.events("node.device_lost"), 10)
    assert lost["data"]["devices"] == {"asic.s19": ["s19-0"]}


def test_submit_wait_streams_the_log_and_exits_with_the_job_exit_code(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.add_agent("node-a", "cpu=2,memory=4Gi")
    assert cluster.server is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPORTION_")}
    env.update(
        APPORTION_SERVER=cluster.server.url,
        APPORTION_TOKEN=cluster.server.token,
        APPORTION_CONFIG=str(tmp_path / "none.toml"),
    )
    cli = [sys.executable, "-m", "apportion.cli.main"]
    started = time.monotonic()
    proc = subprocess.run(
        [
            *cli,
            "submit",
            "--cpu",
            "500m",
            "--memory",
            "64Mi",
            "--wait",
            "--",
            "sh",
            "-c",
            "echo out-line; sleep 0.5; echo err-line >&2; exit 7",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 7, proc.stderr
    assert proc.stdout == "out-line\n"
    assert "err-line" in proc.stderr and time.monotonic() - started < 30
    job_id = proc.stderr.split("submitted ", 1)[1].split()[0]
    logs = subprocess.run(
        [*cli, "jobs", "logs", job_id], env=env, capture_output=True, text=True, timeout=30
    )
    assert (logs.returncode, logs.stdout, logs.stderr) == (0, "out-line\n", "err-line\n")
    ok = subprocess.run(
        [*cli, "submit", "--cpu", "500m", "--wait", "--", "true"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0


def test_nvml_gpus_are_registered_pinned_by_uuid_and_reported_in_heartbeats(
    cluster: Cluster, tmp_path: Path
) -> None:
    from e2e.cluster import fake_nvml_env

    out = tmp_path / "out"
    out.mkdir()
    # Only cpu and memory are declared: the two GPUs come from (fake) NVML.
    cluster.add_agent("h100-box", "cpu=4,memory=8Gi", env=fake_nvml_env(tmp_path / "nvml"))
    with cluster.api as c:
        node = c.get("/api/v1/nodes/h100-box").json()
    assert node["resources"]["gpu"] == "2" and node["labels"]["gpu.model"] == "H100"
    uuids = {d["id"]: d["uuid"] for d in node["devices"]["gpu"]}
    job = cluster.submit(
        payload("record", out, 0.1), resources={"cpu": "1", "memory": "256Mi", "gpu": 1}
    )
    cluster.wait_jobs([job["id"]], timeout=30)
    [task] = cluster.job(job["id"])["tasks"]
    [device] = cluster.allocation(task["allocation_id"])["devices"]["gpu"]
    record = json.loads((out / f"{task['id']}.json").read_text())
    assert record["cuda"] == uuids[device]  # CUDA_VISIBLE_DEVICES names the GPU by UUID
    [info] = record["devices"]["gpu"]
    assert (info["id"], info["uuid"], info["model"]) == (device, uuids[device], "H100")
    with cluster.api as c:
        gpus = wait_for(
            "GPU readings in a heartbeat",
            lambda: c.get("/api/v1/agents/h100-box").json()["usage"].get("gpus"),
            10,
        )
    assert [(g["uuid"], g["temperature_c"]) for g in gpus] == [(uuids["0"], 31), (uuids["1"], 32)]


def test_a_tasks_allocation_is_released_only_through_its_job(cluster: Cluster) -> None:
    """A released task allocation once handed a busy GPU to the next job:
    now it is refused (409) while the task lives, and an admin's forced
    release cancels the job and releases only after the process exited."""
    agent = cluster.add_agent("node-a", "cpu=2,memory=4Gi,gpu=1")
    with cluster.api as c:
        user = c.post("/api/v1/tokens", json={"name": "alice", "role": "user"}).json()["token"]
    assert cluster.server is not None
    with cluster.server.client(user) as alice:
        r = alice.post(
            "/api/v1/jobs",
            json={"command": payload("sleeper", 600), "resources": {"cpu": "500m", "gpu": "1"}},
        )
        assert r.status_code == 201, r.text
        job = r.json()
        task = wait_for("running", lambda: _running_task(cluster, job["id"]), 20)
        alloc_id = task["allocation_id"]
        r = alice.delete(f"/api/v1/allocations/{alloc_id}")
        assert r.status_code == 409, r.text
        assert r.json()["error"] == "allocation_owned_by_task"
        assert r.json()["job"] == job["id"]
        assert f"cancel the job instead (apportion jobs cancel {job['id']})" in r.json()["message"]
        r = alice.delete(f"/api/v1/allocations/{alloc_id}", params={"force": "true"})
        assert r.status_code == 403, r.text
        own = alice.post("/api/v1/allocations", json={"resources": {"cpu": "100m"}}).json()
        r = alice.delete(f"/api/v1/allocations/{own['id']}", params={"reason": "node_lost"})
        assert (r.status_code, r.json()["error"], r.json()["field"]) == (
            422,
            "reason_reserved",
            "reason",
        )
        assert alice.delete(f"/api/v1/allocations/{own['id']}").json()["reason"] == "released"
    assert cluster.allocation(alloc_id)["state"] == "active"
    [pid] = agent.task_pids()
    with cluster.api as admin:
        r = admin.delete(f"/api/v1/allocations/{alloc_id}", params={"force": "true"})
    assert r.status_code == 200, r.text
    assert (r.json()["state"], r.json()["reason"]) == ("released", "cancelled")
    assert not _alive(pid)  # the process had exited before the release was answered
    ended = cluster.job(job["id"])
    assert (ended["state"], ended["tasks"][0]["state"]) == ("cancelled", "cancelled")


def test_logs_and_checkpoints_are_capped_per_task(tmp_path: Path) -> None:
    """Issue 17, finding 6: 200 MB of log chunks and a 400 MB checkpoint were
    accepted. Now a task's log keeps its first APPORTION_LOG_MAX bytes (and
    says it was cut), and a checkpoint over APPORTION_CHECKPOINT_MAX is refused
    with 413 while it streams."""
    from e2e.cluster import FAST_SERVER_ENV

    cluster = Cluster(
        tmp_path,
        server_env={
            **FAST_SERVER_ENV,
            "APPORTION_LOG_MAX": "64Ki",
            "APPORTION_CHECKPOINT_MAX": "1Mi",
        },
    ).start()
    try:
        agent = cluster.add_agent("node-a", "cpu=2,memory=4Gi")
        job = cluster.submit(["sh", "-c", "head -c 200000 /dev/zero | tr '\\\\0' x; sleep 600"])
        task = wait_for("running", lambda: _running_task(cluster, job["id"]), 20)
        with cluster.api as c:
            log = wait_for(
                "the log cut at the cap",
                lambda: (g := c.get(f"/api/v1/jobs/{job['id']}/logs").json())["truncated"] and g,
                30,
            )
        assert (log["size"], len(log["data"])) == (65536, 65536)
        assert cluster.server is not None
        with cluster.server.client(agent.token) as a:
            r = a.put(
                f"/api/v1/agents/node-a/tasks/{task['id']}/checkpoint",
                content=(b"x" * 65536 for _ in range(20)),
                headers={"content-type": "application/x-tar"},
            )
        assert (r.status_code, r.json()["error"]) == (413, "body_too_large"), r.text
    finally:
        cluster.close()


def test_a_job_array_runs_each_index_once_and_lists_on_one_line(cluster: Cluster) -> None:
    """Issue 13: `submit --array N` is one job of N independent tasks, each
    told its index; `jobs list` shows it on one line with counts per state."""
    cluster.add_agent("node-a", "cpu=4,memory=4Gi")
    assert cluster.server is not None
    env = {
        **os.environ,
        "APPORTION_SERVER": cluster.server.url,
        "APPORTION_TOKEN": cluster.server.token,
    }
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "apportion.cli.main",
            "submit",
            "--array",
            "6",
            "--cpu",
            "1",
            "--json",
            "--",
            "sh",
            "-c",
            "echo index $APPORTION_ARRAY_INDEX of $APPORTION_ARRAY_SIZE",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    job = json.loads(out.stdout)
    assert (job["array"], job["task_counts"]["total"]) == (6, 6)
    done = cluster.wait_jobs([job["id"]], timeout=60)[job["id"]]
    assert done["state"] == "succeeded"
    with cluster.api as c:
        tasks = c.get(f"/api/v1/jobs/{job['id']}").json()["tasks"]
        logs = {
            t["index"]: c.get(
                f"/api/v1/jobs/{job['id']}/logs", params={"task": str(t["index"])}
            ).json()["data"]
            for t in tasks
        }
    assert sorted(t["index"] for t in tasks) == [0, 1, 2, 3, 4, 5]
    assert logs == {i: f"index {i} of 6\n" for i in range(6)}
    listed = subprocess.run(
        [sys.executable, "-m", "apportion.cli.main", "jobs", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    [line] = [row for row in listed.stdout.splitlines() if job["id"] in row]
    assert "array 6x cpu=1" in line and "succeeded 6" in line


def test_a_command_waits_for_a_node_with_an_agent(cluster: Cluster) -> None:
    """Issue 14: the README tour once put `submit -- sleep 30` on a node added
    by hand, with no agent to run it: scheduled forever. A job with a command
    now goes only where an agent runs; explain says so; a lease goes anywhere."""
    with cluster.api as c:
        assert (
            c.post(
                "/api/v1/nodes", json={"name": "bare", "resources": {"cpu": "8", "memory": "8Gi"}}
            ).status_code
            == 201
        )
        job = cluster.submit(["sh", "-c", "echo ran"])
        lease = c.post("/api/v1/jobs", json={"resources": {"cpu": "1"}}).json()
        wait_for(
            "the lease running on the bare node",
            lambda: cluster.job(lease["id"])["state"] == "running",
            20,
        )
        why = wait_for(
            "an explanation",
            lambda: (e := c.get(f"/api/v1/jobs/{job['id']}/explain").json()).get("summary") and e,
            20,
        )
        assert cluster.job(job["id"])["state"] == "pending"
        assert "apportion.io/agent" in json.dumps(why), why
    cluster.add_agent("node-a", "cpu=2,memory=4Gi")
    done = cluster.wait_jobs([job["id"]], timeout=60)[job["id"]]
    assert (done["state"], done["tasks"][0]["node"]) == ("succeeded", "node-a")
