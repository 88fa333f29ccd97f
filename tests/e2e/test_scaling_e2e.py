"""Autoscaling end to end: a real server whose ``auto`` pool is fed by the
``local`` provider, which starts real ``apportion agent`` processes.

A burst of jobs that fits nowhere scales the pool up; the new agents join
with one-time join tokens, run the jobs and, once the load is gone, are
drained, deleted from the ledger and terminated, back to ``min_size``. No
node with work on it is ever named for a scale-down or terminated. Every
process started here (server, agents, their fences and tasks) is killed at
the end, whatever happened.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from e2e.cluster import payload
from support import ServerProcess

pytestmark = pytest.mark.slow

POOL = "burst"
MAX_SIZE = 3
SHORT_S = 1.0
LONG_S = 8.0
DEADLINE_S = 60.0
"""The whole scenario, from the burst to the pool back at its minimum (about
15 s on an idle machine)."""

AGENT_COMMAND = [
    # The agent scrubs its join token from its environment: a shell in front
    # keeps a copy beside its work directory, for the check that it works once.
    "sh", "-c", 'printenv APPORTION_TOKEN > "$0.join-token"; exec "$@"', "{work_dir}",
    "{python}", "-m", "apportion.cli.main", "agent", "--server", "{server}", "--name", "{name}",
    "--resources", "{resources}", "--labels", "{labels}", "--work-dir", "{work_dir}",
    "--on-exit", "stop", "--heartbeat", "0.5", "--poll-wait", "5", "--log-interval", "0.3",
    "--watchdog-interval", "0.2", "--rescan-interval", "3600", "--stop-after-disconnect", "10",
    # The payloads write to this test's temporary directories, as root when it runs as root.
    *(["--task-user", "root"] if os.geteuid() == 0 else []),
]


def _config(state_dir: Path) -> str:
    command = ", ".join(json.dumps(part) for part in AGENT_COMMAND)
    return f"""
[scaling]
interval_s = 0.5
join_timeout_s = 60

[providers.local]
kind = "local"
state_dir = {json.dumps(str(state_dir))}
grace_s = 5
command = [{command}]

[[providers.local.node_types]]
name = "small"
resources = {{ cpu = "1", memory = "1Gi" }}

[[pools]]
name = "{POOL}"
provider = "local"
node_type = "small"
min_size = 0
max_size = {MAX_SIZE}
mode = "auto"
labels = {{ facility = "burst" }}
target = 0.7
scale_up_above = 0.9
scale_down_below = 0.5
window_s = 2
cooldown_up_s = 2
cooldown_down_s = 3
"""


def _ts(value: str | None) -> float:
    assert value is not None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _ours(proc: psutil.Process, root: str) -> bool:
    """A process this test started: its command line or its environment
    names the test's own temporary directory."""
    with contextlib.suppress(psutil.Error):
        if any(root in part for part in proc.cmdline()):
            return True
        return any(root in value for value in proc.environ().values())
    return False


def _kill_everything_under(root: Path, state_dir: Path) -> list[int]:
    """SIGKILL every agent the provider recorded (its whole process group),
    then any process left whose command line or environment names ``root``
    (fences, tasks); answer the pids that had to be killed."""
    killed: list[int] = []
    with contextlib.suppress(OSError, ValueError):
        records = json.loads((state_dir / "nodes.json").read_text())["nodes"].values()
        for record in records:
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(record["pid"])
                if record["started"] and abs(proc.create_time() - record["started"]) > 1.0:
                    continue  # the pid was reused: not ours
                if proc.status() != psutil.STATUS_ZOMBIE:
                    killed.append(proc.pid)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(record["pid"], signal.SIGKILL)
    me = os.getpid()
    for proc in psutil.process_iter():
        if proc.pid != me and _ours(proc, str(root)):
            with contextlib.suppress(psutil.Error):
                if proc.status() != psutil.STATUS_ZOMBIE:
                    killed.append(proc.pid)
                proc.kill()
    return killed


@pytest.fixture
def scaling_server(tmp_path: Path) -> Iterator[tuple[ServerProcess, Path]]:
    root = tmp_path
    state_dir = root / "local-nodes"
    (root / "server").mkdir(parents=True)
    config = root / "server.toml"
    config.write_text(_config(state_dir))
    # No APPORTION_SERVER_URL: the nodes must find the server at the port it
    # listens on.
    server = ServerProcess(root / "server", extra_env={
        "APPORTION_CONFIG_FILE": str(config),
        "APPORTION_NODE_DOWN_AFTER": "5",
        "APPORTION_NODE_SWEEP_INTERVAL": "0.2",
        "APPORTION_POLL_HOLD": "5",
    })
    try:
        server.start()
        yield server, state_dir
    finally:
        # Agents first (they would outlive the server), then the server, then
        # anything else that names this test's directory.
        _kill_everything_under(state_dir, state_dir)
        server.stop()
        _kill_everything_under(root, state_dir)


class Watch:
    """Polls the API, keeping what was seen and when."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.api = server.client()
        self.joined_at: dict[str, float] = {}
        self.labels: dict[str, dict[str, str]] = {}
        self.gone_at: dict[str, float] = {}

    def nodes(self) -> dict[str, dict[str, Any]]:
        r = self.api.get("/api/v1/nodes")
        assert r.status_code == 200, r.text
        now = time.time()
        nodes = {n["name"]: n for n in r.json()["nodes"]}
        for name, node in nodes.items():
            if name not in self.joined_at:
                self.joined_at[name] = now
                self.labels[name] = dict(node["labels"])
        for name in self.joined_at:
            if name not in nodes and name not in self.gone_at:
                self.gone_at[name] = now
        return nodes

    def jobs(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        out = {}
        for job_id in ids:
            r = self.api.get(f"/api/v1/jobs/{job_id}")
            assert r.status_code == 200, r.text
            out[job_id] = r.json()
        return out

    def pool(self) -> dict[str, Any]:
        r = self.api.get("/api/v1/scaling/pools")
        assert r.status_code == 200, r.text
        [pool] = r.json()["pools"]
        return pool  # type: ignore[no-any-return]

    def events(self, *kinds: str) -> list[dict[str, Any]]:
        db = self.server.data_dir / "apportion.db"
        marks = ",".join("?" * len(kinds))
        with contextlib.closing(sqlite3.connect(db, timeout=10)) as conn:
            rows = conn.execute(f"SELECT kind, subject, data, at FROM events WHERE kind IN "
                                f"({marks}) ORDER BY id", kinds).fetchall()
        return [{"kind": k, "subject": s, "data": json.loads(d), "at": float(at)}
                for k, s, d, at in rows]


def _agent_logs(state_dir: Path) -> str:
    out = []
    for log in sorted(state_dir.glob("nodes/*/agent.log")):
        with contextlib.suppress(OSError):
            out.append(f"--- {log.parent.name}\n{log.read_text()[-1500:]}")
    return "\n".join(out) or "(no agent logs)"


def _until(what: str, deadline: float, check: Any, diagnose: Any, every: float = 0.25) -> Any:
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})\n{diagnose()}")


@pytest.mark.timeout(90)
def test_a_burst_scales_the_pool_up_runs_everything_and_scales_back_down(
    scaling_server: tuple[ServerProcess, Path], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    server, state_dir = scaling_server
    watch = Watch(server)
    request.addfinalizer(watch.api.close)
    out = tmp_path / "out"
    out.mkdir()

    def diagnose() -> str:
        with contextlib.suppress(Exception):
            pool = watch.pool()
            return (f"pool: nodes={pool['nodes']} joining={pool['joining']} "
                    f"recent={[r['reason'] for r in pool['recent_decisions'][-4:]]}\n"
                    f"{_agent_logs(state_dir)}")
        return _agent_logs(state_dir)

    assert watch.nodes() == {}, "the cluster must start with no capacity at all"
    pool = watch.pool()
    assert (pool["mode"], pool["min_size"], pool["max_size"]) == ("auto", 0, MAX_SIZE)

    # -- the burst: six one-cpu jobs, one of them long, and no node at all ------
    # Each waits for the pool, the first also for its label (facility=burst).
    start = time.monotonic()
    t0 = time.time()
    deadline = start + DEADLINE_S
    ids = []
    for i in range(6):
        seconds = LONG_S if i == 5 else SHORT_S
        r = watch.api.post("/api/v1/jobs", json={
            "name": f"burst-{i}", "command": payload("record", out, seconds),
            "resources": {"cpu": "1", "memory": "128Mi"},
            "constraints": ["facility=burst"] if i == 0 else []})
        assert r.status_code == 201, r.text
        # With no node at all, each waits for the pool. On a loaded machine
        # the scaler may add a node mid-burst: a job submitted once that node
        # joined fits a node that exists and names no pool.
        reason = r.json()["reason"]
        assert reason == f"waiting for pool {POOL} to add a node" or (
            i > 0 and reason is None and watch.nodes()), r.text
        ids.append(r.json()["id"])
    long_job = ids[5]

    def three_joined() -> bool:
        pool_nodes = [n for n in watch.nodes().values() if n["labels"].get("pool") == POOL]
        return len(pool_nodes) == MAX_SIZE and all(n["state"] == "ready" for n in pool_nodes)

    _until(f"{MAX_SIZE} pool nodes to join", deadline, three_joined, diagnose)
    t_joined = time.time() - t0

    # A join token works once: the one an agent joined with is refused when
    # presented again. (The agent scrubbed it from its own environment.)
    [record, *_] = json.loads((state_dir / "nodes.json").read_text())["nodes"].values()
    assert "APPORTION_TOKEN" not in psutil.Process(record["pid"]).environ()
    join_token = Path(record["work_dir"] + ".join-token").read_text().strip()
    assert join_token.startswith("apj_")
    again = httpx.post(server.url + "/api/v1/agents/register", timeout=10,
                       headers={"Authorization": f"Bearer {join_token}"},
                       json={"node": {"name": "impostor", "resources": {"cpu": "1"}},
                             "agent": {"id": "impostor-agent"}})
    assert again.status_code == 401 and "already used" in again.text, again.text

    # -- every job runs on the new nodes and succeeds --------------------------
    # Meanwhile the pool drains what it no longer needs: never the node that
    # runs the long job.
    busy_seen: dict[str, set[str]] = {}

    def all_done() -> dict[str, dict[str, Any]] | None:
        watch.nodes()
        jobs = watch.jobs(ids)
        for job in jobs.values():
            for task in job["tasks"]:
                if task["state"] == "running" and task["node"]:
                    busy_seen.setdefault(task["node"], set()).add(job["id"])
        states = [j["state"] for j in jobs.values()]
        assert "failed" not in states and "cancelled" not in states, jobs
        return jobs if all(s == "succeeded" for s in states) else None

    jobs = _until("all six jobs to succeed", deadline, all_done, diagnose)
    t_done = time.time() - t0

    # -- back to min_size: drained, deleted, terminated ------------------------
    def at_minimum() -> bool:
        pool = watch.pool()
        if pool["nodes"] or pool["joining"] or watch.nodes():
            return False
        # The ledger forgets a node before its machine is terminated: wait
        # for the termination of every node the pool made.
        made = watch.events("scaling.node_created")
        return len(watch.events("scaling.node_terminated")) == len(made)

    _until("the pool to shrink back to 0 nodes", deadline, at_minimum, diagnose)
    t_min = time.time() - t0
    elapsed = time.monotonic() - start

    # -- what happened, from the event log -------------------------------------
    events = watch.events("scaling.scale_up", "scaling.scale_down", "scaling.node_created",
                          "node.joined", "scaling.node_draining", "node.deleted",
                          "scaling.node_terminated", "allocation.released", "scaling.error")

    def of(kind: str) -> list[dict[str, Any]]:
        return [e for e in events if e["kind"] == kind]

    # Shown if an assertion below fails (pytest shows captured output then).
    print("\n".join(f"{e['at'] - t0:6.2f} s  {e['kind']} {e['subject']} {e['data']}"
                    for e in events), file=sys.stderr)
    assert not of("scaling.error"), of("scaling.error")

    # One scale-up of MAX_SIZE (the burst packs onto 6 nodes, capped by
    # max_size) when the scaler sees the whole burst at once. On a loaded
    # machine it may tick while the burst still arrives: then the rest
    # follows after cooldown_up_s, and never more than max_size in all.
    # (tests/core/test_autoscale.py holds a whole burst to one scale-up.)
    ups = of("scaling.scale_up")
    assert sum(e["data"]["count"] for e in ups) == MAX_SIZE, ups
    assert all("pending task(s) fit on no node" in e["data"]["reason"] for e in ups), ups
    up_times = [e["at"] for e in ups]
    assert all(b - a >= 2.0 for a, b in itertools.pairwise(up_times)), up_times

    created = {e["subject"] for e in of("scaling.node_created")}
    joined = {e["subject"]: e["data"] for e in of("node.joined")}
    assert len(created) == MAX_SIZE and set(joined) == created, (created, joined)
    # Each joined with its own one-time join token, and got the pool's labels.
    assert len({d["join_token"] for d in joined.values()}) == MAX_SIZE
    assert all(d["pool"] == POOL for d in joined.values())
    for name in created:
        labels = watch.labels[name]
        assert {k: labels.get(k) for k in ("pool", "provider", "node-type", "facility")} == {
            "pool": POOL, "provider": "local", "node-type": "small", "facility": "burst"}, labels

    # Every job succeeded exactly once, on a pool node, in one attempt.
    records = {p.name[:-5]: json.loads(p.read_text()) for p in out.glob("*.json")
               if not p.name.endswith(".start.json")}
    assert len(records) == 6, f"one finished record per job: {sorted(records)}"
    spans: dict[str, list[tuple[float, float, str]]] = {}
    for job_id, job in jobs.items():
        [task] = job["tasks"]
        assert (job["state"], job["attempts"], task["state"]) == ("succeeded", 1, "succeeded")
        assert task["node"] in created, f"{job_id} ran on {task['node']}, not a pool node"
        record = records[task["id"]]
        assert record["node"] == task["node"] and record["overlap"] is None
        r = watch.api.get(f"/api/v1/allocations/{task['allocation_id']}")
        alloc = r.json()
        assert (alloc["state"], alloc["reason"]) == ("released", "completed"), alloc
        # The span the node held work for this job: from the grant to the release.
        spans.setdefault(task["node"], []).append(
            (_ts(alloc["created_at"]), _ts(alloc["released_at"]), job_id))
    assert sorted(j for node_spans in spans.values() for _, _, j in node_spans) == sorted(ids)
    active = watch.api.get("/api/v1/allocations", params={"state": "active"}).json()
    assert active["count"] == 0, f"allocations left active: {active}"
    releases = Counter(e["data"]["id"] for e in of("allocation.released"))
    assert set(releases.values()) == {1} and len(releases) == 6, releases

    # Scale-downs name idle nodes only; each named node is drained, then
    # deleted (nothing left on it to release), then terminated, and only
    # once its last job's allocation was released.
    downs = of("scaling.scale_down")
    assert downs, "the pool never scaled down"
    named = [n for e in downs for n in e["data"]["nodes"]]
    assert sorted(named) == sorted(created), f"every pool node drained once: {downs}"
    # Not within cooldown_down_s (3 s) of the scale-up, nor of each other.
    times = [ups[-1]["at"]] + [e["at"] for e in downs]
    assert all(b - a >= 3.0 for a, b in itertools.pairwise(times)), times
    long_node = jobs[long_job]["tasks"][0]["node"]
    for e in downs:
        for name in e["data"]["nodes"]:
            for begin, end, job_id in spans.get(name, []):
                assert not begin <= e["at"] < end, (
                    f"scale-down at {e['at']} named {name} while it ran {job_id} "
                    f"({begin}-{end})")
    # With the short jobs done, the pool drained what the long job did not
    # need while that job still ran: a partial scale-down around a busy node.
    long_begin, long_end = next((b, e) for b, e, j in spans[long_node] if j == long_job)
    early = [e for e in downs if long_begin < e["at"] < long_end]
    assert early and long_node not in early[0]["data"]["nodes"], (
        f"expected a scale-down during the long job that spares {long_node}: {downs}")
    draining = {e["subject"]: e["at"] for e in of("scaling.node_draining")}
    deleted = {e["subject"]: e for e in of("node.deleted")}
    terminated = {e["subject"]: e for e in of("scaling.node_terminated")}
    assert set(draining) == set(deleted) == set(terminated) == created, (
        draining, deleted, terminated)
    for name in created:
        assert deleted[name]["data"]["released"] == [], (
            f"{name} was deleted while it held an allocation: {deleted[name]}")
        assert draining[name] <= deleted[name]["at"] <= terminated[name]["at"]
        assert terminated[name]["data"]["why"] == "drained and empty"
        assert terminated[name]["data"]["states"] == ["terminated"], terminated[name]
        for _, end, job_id in spans.get(name, []):
            assert end <= deleted[name]["at"], (
                f"{name} was deleted at {deleted[name]['at']} before {job_id} "
                f"released its allocation at {end}")
    # And the API watcher never saw a node vanish while a job ran on it.
    for name, gone in watch.gone_at.items():
        for _, end, job_id in spans.get(name, []):
            assert end <= gone, f"{name} vanished at {gone} while {job_id} ran (until {end})"
    assert busy_seen.get(long_node, set()) >= {long_job}

    # The agent processes are gone, and the provider knows them terminated.
    state = json.loads((state_dir / "nodes.json").read_text())["nodes"]
    assert set(state) == created
    for name, record in state.items():
        assert record["terminated_at"] is not None, record
        with contextlib.suppress(psutil.NoSuchProcess):
            proc = psutil.Process(record["pid"])
            assert proc.status() == psutil.STATUS_ZOMBIE or \
                abs(proc.create_time() - record["started"]) > 1.0, (
                    f"agent of {name} (pid {record['pid']}) still runs")

    pool = watch.pool()
    assert pool["nodes"] == [] and pool["joining"] == []
    assert pool["decision_counts"]["scale_up"] >= 1

    assert elapsed < DEADLINE_S
    print(f"\nburst -> {MAX_SIZE} nodes joined: {t_joined:.1f} s; -> all 6 jobs done: "
          f"{t_done:.1f} s; -> pool back at 0 nodes: {t_min:.1f} s; "
          f"scale-downs at {[round(e['at'] - t0, 1) for e in downs]} s "
          f"naming {[e['data']['nodes'] for e in downs]}", file=sys.stderr)
