"""A fault run: servers on one PostgreSQL, agents, a random stream of
submits, cancels, releases and completions over every server, and random
``kill -9`` of servers and agents with restarts, for a bounded time. At the
end the database alone is asked whether the invariant held.

Shared by ``test_faults.py`` (a short run in CI) and ``bench/bench_faults.py``
(a longer one that prints figures).
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from e2e.cluster import AgentProcess, ServerGroup, store_violations, wait_for

TERMINAL = ("succeeded", "failed", "cancelled")


@dataclass
class FaultReport:
    seconds: float
    operations: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    leader_changes: int = 0
    leaders: list[tuple[str, int]] = field(default_factory=list)
    jobs: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    """Why the jobs that failed did (what the job row says)."""
    waiting: dict[str, str] = field(default_factory=dict)
    """Jobs still pending at the end, with the reason explain gives."""
    stuck: dict[str, str] = field(default_factory=dict)
    """Jobs neither final nor waiting at the end (a violation)."""
    violations: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def violation_count(self) -> int:
        return sum(len(v) for v in self.violations.values()) + len(self.stuck)

    def lines(self) -> list[str]:
        return [
            f"ran {self.seconds:.0f} s: {sum(self.operations.values())} operations "
            f"({', '.join(f'{k} {v}' for k, v in sorted(self.operations.items()))})",
            f"faults injected: {sum(self.faults.values())} "
            f"({', '.join(f'{k} {v}' for k, v in sorted(self.faults.items()))})",
            f"leader changes: {self.leader_changes} (epochs seen: "
            f"{', '.join(str(e) for _, e in self.leaders)})",
            f"jobs: {', '.join(f'{k} {v}' for k, v in sorted(self.jobs.items()))}",
            *(f"  failed x{n}: {why}" for why, n in self.failures.most_common()),
            f"violations: {self.violation_count}"
            + "".join(f"\n  {k}: {v[:5]}" for k, v in self.violations.items() if v)
            + "".join(f"\n  job {j} stuck: {why}" for j, why in self.stuck.items()),
            *(f"job {j} still waiting: {why}" for j, why in self.waiting.items()),
        ]


class FaultRun:
    """Drives one run over a ``ServerGroup``."""

    def __init__(self, group: ServerGroup, *, seed: int, agents: int = 3) -> None:
        self.group = group
        self.rng = random.Random(seed)
        self.report = FaultReport(0.0)
        self.jobs: dict[str, str] = {}  # id -> "command" | "lease"
        self.agent_count = agents
        self._stop = threading.Event()
        self._lock = threading.Lock()

    # -- setting up --------------------------------------------------------------------

    def start_agents(self) -> None:
        n = len(self.group.servers)
        for i in range(self.agent_count):
            order = [(i + k) % n for k in range(n)]
            self.group.add_agent(f"node-{i}", servers=order,
                                 resources="cpu=4,memory=8Gi,gpu=2")

    # -- the run -------------------------------------------------------------------------

    def run(self, seconds: float) -> FaultReport:
        started = time.monotonic()
        faults = threading.Thread(target=self._faults, daemon=True)
        watcher = threading.Thread(target=self._watch_leader, daemon=True)
        faults.start()
        watcher.start()
        try:
            while time.monotonic() - started < seconds:
                self._one_operation()
                time.sleep(self.rng.uniform(0.02, 0.15))
        finally:
            self._stop.set()
            faults.join(30)
            watcher.join(10)
        self.report.seconds = time.monotonic() - started
        self._settle()
        return self.report

    def _client(self) -> httpx.Client:
        alive = self.group.alive()
        server = self.rng.choice(alive) if alive else self.group.servers[0]
        return httpx.Client(base_url=server.url, timeout=10,
                            headers={"Authorization": f"Bearer {self.group.token}"})

    def _one_operation(self) -> None:
        kind = self.rng.choices(
            ["submit", "lease", "complete", "cancel", "grant_release", "release_owned"],
            weights=[40, 8, 8, 12, 20, 12])[0]
        try:
            with self._client() as c:
                outcome = getattr(self, f"_op_{kind}")(c)
        except httpx.HTTPError:
            outcome = "unreachable"
        self.report.operations[f"{kind}:{outcome}"] += 1

    def _op_submit(self, c: httpx.Client) -> str:
        seconds = round(self.rng.uniform(0.2, 1.5), 2)
        resources = {"cpu": "200m", "memory": "64Mi"}
        if self.rng.random() < 0.5:
            resources["gpu"] = "1"
        r = c.post("/api/v1/jobs", json={
            "command": ["sleep", str(seconds)], "resources": resources,
            "restart": {"policy": "on-failure", "max_retries": 20, "backoff": "0.2s"}})
        if r.status_code == 201:
            self.jobs[r.json()["id"]] = "command"
        return str(r.status_code)

    def _op_lease(self, c: httpx.Client) -> str:
        r = c.post("/api/v1/jobs", json={"resources": {"cpu": "100m", "gpu": "1"}})
        if r.status_code == 201:
            self.jobs[r.json()["id"]] = "lease"
        return str(r.status_code)

    def _op_complete(self, c: httpx.Client) -> str:
        leases = [j for j, k in self.jobs.items() if k == "lease"]
        if not leases:
            return "none"
        r = c.post(f"/api/v1/jobs/{self.rng.choice(leases)}/complete",
                   json={"succeeded": True})
        return str(r.status_code)

    def _op_cancel(self, c: httpx.Client) -> str:
        if not self.jobs:
            return "none"
        r = c.post(f"/api/v1/jobs/{self.rng.choice(list(self.jobs))}/cancel")
        return str(r.status_code)

    def _op_grant_release(self, c: httpx.Client) -> str:
        r = c.post("/api/v1/allocations", json={"resources": {"cpu": "100m"}})
        if r.status_code != 201:
            return f"grant {r.status_code}"
        r = c.delete(f"/api/v1/allocations/{r.json()['id']}")
        return str(r.status_code)

    def _op_release_owned(self, c: httpx.Client) -> str:
        """Releasing a running task's allocation must be refused."""
        active = c.get("/api/v1/allocations", params={"state": "active", "limit": 200}).json()
        owned = [a for a in active.get("allocations", []) if "apportion.job" in a["labels"]]
        if not owned:
            return "none"
        alloc = self.rng.choice(owned)
        r = c.delete(f"/api/v1/allocations/{alloc['id']}")
        if r.status_code == 200 and alloc["labels"]["apportion.job"] in self.jobs:
            # Allowed only if its task had ended in between (its release is then a no-op).
            with self._lock:
                self.report.operations["release_owned:ended_between"] += 1
        return str(r.status_code)

    # -- faults ----------------------------------------------------------------------------

    def _faults(self) -> None:
        first = True
        while not self._stop.wait(self.rng.uniform(3.0, 6.0)):
            if (first or self.rng.random() < 0.5) and len(self.group.alive()) >= 2:
                # The first fault always takes the leader: a takeover is part of every run.
                leader = self.group.leader_index() if first else None
                i = leader if leader is not None else self.rng.choice(
                    [k for k, s in enumerate(self.group.servers) if s in self.group.alive()])
                first = False
                self.group.servers[i].kill9()
                self.report.faults["server kill -9"] += 1
                if self._stop.wait(self.rng.uniform(0.5, 2.0)):
                    self.group.restart(i)
                    return
                self.group.restart(i)
            else:
                agent: AgentProcess = self.rng.choice(list(self.group.agents.values()))
                agent.kill9()
                self.report.faults["agent kill -9"] += 1
                self._stop.wait(self.rng.uniform(0.3, 1.5))
                agent.start()

    def _watch_leader(self) -> None:
        last: tuple[str, int] | None = None
        while not self._stop.wait(0.3):
            with contextlib.suppress(httpx.HTTPError, KeyError, IndexError), self._client() as c:
                leader = c.get("/api/v1/cluster").json()["leader"]
                if leader["server_id"] is None:
                    continue
                now = (leader["server_id"], int(leader["epoch"]))
                if now != last:
                    if last is not None:
                        self.report.leader_changes += 1
                    self.report.leaders.append(now)
                    last = now

    # -- the end -----------------------------------------------------------------------------

    def _settle(self) -> None:
        """Everything back up; leases completed; wait for every job to end."""
        for i, server in enumerate(self.group.servers):
            if server not in self.group.alive():
                self.group.restart(i)
        for agent in self.group.agents.values():
            if agent.proc is None or agent.proc.poll() is not None:
                agent.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            states = self._states()
            for job_id, state in states.items():
                if self.jobs[job_id] == "lease" and state == "running":
                    with contextlib.suppress(httpx.HTTPError), self._client() as c:
                        c.post(f"/api/v1/jobs/{job_id}/complete", json={"succeeded": True})
            if all(s in TERMINAL for s in states.values()):
                break
            time.sleep(1.0)
        states = self._states()
        self.report.jobs = Counter(states.values())
        with self._client() as c:
            for job_id, state in states.items():
                if state in ("pending", "preempted"):
                    why = c.get(f"/api/v1/jobs/{job_id}/explain").json()
                    self.report.waiting[job_id] = f"{state}: {why.get('summary') or why}"
                elif state not in TERMINAL:
                    self.report.stuck[job_id] = state
        self.report.violations = store_violations(self.group.database_url)

    def _states(self) -> dict[str, str]:
        out = {}
        self.report.failures.clear()
        with self._client() as c:
            for job_id in self.jobs:
                job = c.get(f"/api/v1/jobs/{job_id}").json()
                out[job_id] = job["state"]
                if job["state"] == "failed":
                    self.report.failures[f"{self.jobs[job_id]}: {job['reason']}"] += 1
        return out


def fault_group(root: Path, database_url: str, servers: int = 3) -> ServerGroup:
    group = ServerGroup(root, database_url, size=servers)
    group.start()
    wait_for("a leader", lambda: group.cluster()["leader"]["server_id"], 30)
    return group
