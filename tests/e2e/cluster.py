"""A server and several real agent processes on loopback, for end-to-end tests
and the switch benchmark. Every process is started in its own session and
killed (with its tasks and its fence) in ``close``."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from apportion.agent import fence as fence_module
from apportion.agent import record
from support import ServerProcess

PAYLOADS = Path(__file__).parent / "payloads"
TERMINAL = ("succeeded", "failed", "cancelled")

FAST_SERVER_ENV = {
    "APPORTION_NODE_DOWN_AFTER": "2",
    "APPORTION_NODE_SWEEP_INTERVAL": "0.2",
    "APPORTION_POLL_HOLD": "5",
}


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30.0, every: float = 0.1) -> Any:
    """Poll ``check`` until it returns something true; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@dataclass
class AgentProcess:
    """``apportion agent`` as a real process (with declared resources, unless
    ``resources`` is empty: then it discovers them)."""

    name: str
    url: str
    token: str
    work_dir: Path
    resources: str
    heartbeat: float = 0.3
    stop_after_disconnect: float = 2.0
    log_interval: float = 0.3
    watchdog: float = 0.1
    extra: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    task_user: str | None = field(default_factory=lambda: "root" if os.geteuid() == 0 else None)
    """Tests share their temporary directories with the tasks they run, so
    agents started as root run tasks as root, explicitly; tests/e2e/
    test_isolation.py runs agents with real task users."""
    token_file: bool = False
    """Give the token in a 0600 file rather than the environment."""
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentProcess:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("APPORTION_")}
        env["APPORTION_LOG_LEVEL"] = "INFO"
        # The token goes by environment (which the agent scrubs) or by file,
        # never on its command line.
        secret = ["--token-file", str(self._write_token())] if self.token_file else []
        if not self.token_file:
            env["APPORTION_TOKEN"] = self.token
        env.update(self.env)
        task_user = ["--task-user", self.task_user] if self.task_user else []
        log = open(self.work_dir / "agent.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "apportion.cli.main",
                "agent",
                "--server",
                self.url,
                "--name",
                self.name,
                *task_user,
                *secret,
                *(["--resources", self.resources] if self.resources else []),
                "--work-dir",
                str(self.work_dir),
                "--heartbeat",
                str(self.heartbeat),
                "--stop-after-disconnect",
                str(self.stop_after_disconnect),
                "--poll-wait",
                "5",
                "--log-interval",
                str(self.log_interval),
                "--watchdog-interval",
                str(self.watchdog),
                "--rescan-interval",
                "3600",
                *self.extra,
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return self

    def _write_token(self) -> Path:
        path = self.work_dir.parent / f"{self.name}.token"
        path.unlink(missing_ok=True)
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as fh:
            fh.write(self.token)
        return path

    @property
    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.work_dir / "agent.log").read_text()[-4000:]
        return ""

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill9()

    def task_pids(self) -> list[int]:
        pids = []
        for path in self.work_dir.glob("tasks/*/task.json"):
            with contextlib.suppress(OSError, ValueError):
                pid = record.read(path.parent).get("pid")
                if isinstance(pid, int):
                    pids.append(pid)
        return pids

    def cleanup(self) -> None:
        """Kill the agent, its fence and every task process it started."""
        self.kill9()
        pid_file = self.work_dir / "fence.pid"
        with contextlib.suppress(OSError, ValueError, psutil.Error):
            fence = psutil.Process(int(pid_file.read_text().split()[0]))
            if any("apportion.agent.fence" in part for part in fence.cmdline()):
                fence.kill()
        for pid in self.task_pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        for path in self.work_dir.glob("tasks/*/task.json"):
            with contextlib.suppress(OSError, ValueError, TypeError):
                fence_module.remove_cgroup(Path(record.read(path.parent)["cgroup"]))


@dataclass
class Cluster:
    """One server, agents added with ``add_agent``; ``close`` ends them all."""

    root: Path
    server_env: dict[str, str] = field(default_factory=lambda: dict(FAST_SERVER_ENV))
    database_url: str | None = None
    """None: the server's own SQLite file."""
    server: ServerProcess | None = None
    agents: dict[str, AgentProcess] = field(default_factory=dict)

    def start(self) -> Cluster:
        (self.root / "server").mkdir(parents=True, exist_ok=True)
        self.server = ServerProcess(
            self.root / "server", database_url=self.database_url, extra_env=self.server_env
        ).start()
        return self

    def restart_server(self) -> None:
        """kill -9 is the caller's; this starts a new server on the same store and port."""
        assert self.server is not None
        old = self.server
        self.server = ServerProcess(
            old.data_dir,
            token=old.token,
            port=old.port,
            database_url=self.database_url,
            extra_env=self.server_env,
        ).start()

    @property
    def api(self) -> httpx.Client:
        assert self.server is not None
        return self.server.client()

    def add_agent(
        self, name: str, resources: str = "cpu=4,memory=8Gi,gpu=2", wait: bool = True, **kwargs: Any
    ) -> AgentProcess:
        assert self.server is not None
        with self.api as c:
            r = c.post("/api/v1/tokens", json={"name": name, "role": "agent"})
            assert r.status_code == 201, r.text
            token = r.json()["token"]
        agent = AgentProcess(
            name, self.server.url, token, self.root / "agents" / name, resources, **kwargs
        )
        self.agents[name] = agent.start()
        if wait:
            self.wait_node(name, "ready")
        return agent

    def wait_node(self, name: str, state: str, timeout: float = 30.0) -> dict[str, Any]:
        def check() -> Any:
            with self.api as c:
                r = c.get(f"/api/v1/nodes/{name}")
            return r.json() if r.status_code == 200 and r.json()["state"] == state else None

        try:
            return wait_for(f"node {name} {state}", check, timeout)  # type: ignore[no-any-return]
        except AssertionError:
            agent = self.agents.get(name)
            raise AssertionError(
                f"node {name} not {state}; agent log:\n{agent.log if agent else ''}"
            ) from None

    def submit(self, command: list[str], **spec: Any) -> dict[str, Any]:
        body = {"resources": {"cpu": "500m", "memory": "128Mi"}, **spec, "command": command}
        with self.api as c:
            r = c.post("/api/v1/jobs", json=body)
        assert r.status_code == 201, r.text
        return r.json()  # type: ignore[no-any-return]

    def job(self, job_id: str) -> dict[str, Any]:
        with self.api as c:
            return c.get(f"/api/v1/jobs/{job_id}").json()  # type: ignore[no-any-return]

    def wait_jobs(
        self, ids: list[str], timeout: float = 60.0, states: tuple[str, ...] = TERMINAL
    ) -> dict[str, dict[str, Any]]:
        done: dict[str, dict[str, Any]] = {}

        def check() -> bool:
            with self.api as c:
                for job_id in ids:
                    if job_id not in done:
                        job = c.get(f"/api/v1/jobs/{job_id}").json()
                        if job["state"] in states:
                            done[job_id] = job
            return len(done) == len(ids)

        try:
            wait_for(f"{len(ids)} jobs to end", check, timeout, every=0.2)
        except AssertionError:
            missing = {j: self.job(j)["state"] for j in ids if j not in done}
            logs = "\n".join(f"--- {a.name}\n{a.log}" for a in self.agents.values())
            raise AssertionError(f"jobs still not done: {missing}\n{logs}") from None
        return done

    def allocation(self, alloc_id: str) -> dict[str, Any]:
        with self.api as c:
            return c.get(f"/api/v1/allocations/{alloc_id}").json()  # type: ignore[no-any-return]

    def events(self, kind: str) -> list[dict[str, Any]]:
        """Stored events of one kind, read from the SQLite store directly."""
        assert self.server is not None
        with contextlib.closing(sqlite3.connect(self.server.data_dir / "apportion.db")) as db:
            rows = db.execute(
                "SELECT subject, data, at FROM events WHERE kind = ? ORDER BY id", (kind,)
            ).fetchall()
        return [{"subject": s, "data": json.loads(d), "at": at} for s, d, at in rows]

    def close(self) -> None:
        for agent in self.agents.values():
            agent.cleanup()
        if self.server is not None:
            self.server.stop()


def payload(name: str, *args: object) -> list[str]:
    """A command running one of the test payload scripts."""
    return [sys.executable, "-I", "-S", str(PAYLOADS / f"{name}.py"), *map(str, args)]


class Proxy:
    """A TCP proxy on loopback that can be cut and healed: a network
    partition between one agent and the server."""

    def __init__(self, target_port: int) -> None:
        import socket
        import threading

        self.target_port = target_port
        self.port = free_port()
        self._open = threading.Event()
        self._open.set()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        import socket
        import threading

        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self._open.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: Any, dst: Any) -> None:
        try:
            while self._open.is_set():
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.close()

    def cut(self) -> None:
        """Drop every connection and refuse new ones (they are closed at once)."""
        self._open.clear()
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(2)
                s.close()

    def heal(self) -> None:
        self._open.set()

    def close(self) -> None:
        self._stop.set()
        self.cut()
        self._listener.close()


def free_port() -> int:
    from support import free_port as _free

    return _free()


FAKE_PYNVML = """\
# Shadows nvidia-ml-py in an agent under test: the fake NVML of tests/agent.
import sys
sys.path.insert(0, {tests!r})
from agent.fake_nvml import {scenario}

_fake = {scenario}()


def __getattr__(name):
    return getattr(_fake, name)
"""


def fake_nvml_env(where: Path, scenario: str = "h100_pair") -> dict[str, str]:
    """Environment that makes an agent process see the GPUs of a scenario of
    ``tests/agent/fake_nvml.py`` (two fake H100s by default). The caller's
    PYTHONPATH stays behind the fake, so the agent runs the code under test."""
    where.mkdir(parents=True, exist_ok=True)
    (where / "pynvml.py").write_text(
        FAKE_PYNVML.format(tests=str(Path(__file__).parents[1]), scenario=scenario))
    rest = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": os.pathsep.join([str(where), *([rest] if rest else [])])}


@dataclass
class ServerGroup:
    """Several servers on one PostgreSQL database, and agents that know
    some of them (``--server A,B``); ``close`` ends them all."""

    root: Path
    database_url: str
    size: int = 2
    server_env: dict[str, str] = field(
        default_factory=lambda: {**FAST_SERVER_ENV, "APPORTION_LEADER_TIMEOUT": "2"}
    )
    token: str = field(default_factory=lambda: "test-admin-" + os.urandom(8).hex())
    servers: list[ServerProcess] = field(default_factory=list)
    agents: dict[str, AgentProcess] = field(default_factory=dict)

    def start(self) -> ServerGroup:
        for i in range(self.size):
            data = self.root / f"server-{i}"
            data.mkdir(parents=True, exist_ok=True)
            self.servers.append(
                ServerProcess(
                    data,
                    database_url=self.database_url,
                    token=self.token,
                    extra_env=self.server_env,
                )
            )
        for server in self.servers:
            server.start()
        return self

    def restart(self, i: int) -> None:
        """Start server ``i`` again on its port (after the caller's kill -9)."""
        old = self.servers[i]
        old.kill9()
        self.servers[i] = ServerProcess(
            old.data_dir,
            database_url=self.database_url,
            token=self.token,
            port=old.port,
            extra_env=self.server_env,
        ).start()

    def alive(self) -> list[ServerProcess]:
        return [s for s in self.servers if s.proc is not None and s.proc.poll() is None]

    def api(self, i: int | None = None) -> httpx.Client:
        server = self.servers[i] if i is not None else self.alive()[0]
        return server.client()

    def cluster(self, i: int | None = None) -> dict[str, Any]:
        with self.api(i) as c:
            return c.get("/api/v1/cluster").json()  # type: ignore[no-any-return]

    def leader_index(self) -> int | None:
        """The index of the server that leads now, by its own answer."""
        view = self.cluster()
        leader = view["leader"]["server_id"]
        for i, server in enumerate(self.servers):
            if server in self.alive():
                with server.client() as c, contextlib.suppress(httpx.HTTPError):
                    if c.get("/api/v1/cluster").json()["this_server"] == leader:
                        return i
        return None

    def add_agent(
        self,
        name: str,
        servers: list[int],
        resources: str = "cpu=4,memory=8Gi",
        wait: bool = True,
        **kwargs: Any,
    ) -> AgentProcess:
        with self.api() as c:
            r = c.post("/api/v1/tokens", json={"name": name, "role": "agent"})
            assert r.status_code == 201, r.text
            token = r.json()["token"]
        urls = ",".join(self.servers[i].url for i in servers)
        agent = AgentProcess(name, urls, token, self.root / "agents" / name, resources, **kwargs)
        self.agents[name] = agent.start()
        if wait:
            wait_for(f"node {name} ready", lambda: self._node_state(name) == "ready", 30)
        return agent

    def _node_state(self, name: str) -> str | None:
        with self.api() as c:
            r = c.get(f"/api/v1/nodes/{name}")
        return r.json()["state"] if r.status_code == 200 else None

    def job(self, job_id: str, i: int | None = None) -> dict[str, Any]:
        with self.api(i) as c:
            return c.get(f"/api/v1/jobs/{job_id}").json()  # type: ignore[no-any-return]

    def close(self) -> None:
        for agent in self.agents.values():
            agent.cleanup()
        for server in self.servers:
            server.stop()


def store_violations(database_url: str) -> dict[str, list[Any]]:
    """What the invariant forbids, read from the database alone: a device or a
    resource unit held by two active allocations at one instant of the
    allocation history, allocated above capacity, a task attempt with two
    allocations, a task index with two live attempts."""
    import psycopg

    out: dict[str, list[Any]] = {}
    with psycopg.connect(database_url) as db:
        out["device_overlaps"] = db.execute(
            "SELECT a.id, b.id FROM allocations a JOIN allocations b ON a.node = b.node "
            "AND a.id < b.id AND a.created_at < coalesce(b.released_at, 'infinity') "
            "AND b.created_at < coalesce(a.released_at, 'infinity') "
            "CROSS JOIN LATERAL json_each(a.devices::json) AS ad(resource, ids) "
            "CROSS JOIN LATERAL json_array_elements_text(ad.ids) AS ai(device) "
            "WHERE (b.devices::json -> ad.resource) IS NOT NULL AND EXISTS ("
            "SELECT 1 FROM json_array_elements_text(b.devices::json -> ad.resource) AS bi(d) "
            "WHERE bi.d = ai.device)"
        ).fetchall()
        out["over_capacity_now"] = db.execute(
            "SELECT node, resource, allocated, capacity FROM node_resources "
            "WHERE allocated > capacity OR allocated < 0"
        ).fetchall()
        out["balance_mismatch"] = db.execute(
            "SELECT r.node, r.resource, r.allocated, coalesce(sum((a.resources::json ->> "
            "r.resource)::bigint), 0) FROM node_resources r LEFT JOIN allocations a ON "
            "a.node = r.node AND a.state = 'active' GROUP BY r.node, r.resource, r.allocated "
            "HAVING r.allocated <> coalesce(sum((a.resources::json ->> r.resource)::bigint), 0)"
        ).fetchall()
        out["over_capacity_history"] = _history_peaks(db)
        out["attempt_with_two_allocations"] = db.execute(
            'SELECT job_id, "index", attempt FROM tasks GROUP BY job_id, "index", attempt '
            "HAVING count(DISTINCT allocation_id) > 1"
        ).fetchall()
        out["two_live_attempts"] = db.execute(
            "SELECT job_id, \"index\" FROM tasks WHERE state IN ('scheduled', 'starting', "
            "'running') GROUP BY job_id, \"index\" HAVING count(*) > 1"
        ).fetchall()
    return out


def _history_peaks(db: Any) -> list[Any]:
    """(node, resource, instant, held, capacity) wherever the allocations
    active at one instant held more than the node's capacity."""
    capacity = {
        (n, r): c
        for n, r, c in db.execute("SELECT node, resource, capacity FROM node_resources").fetchall()
    }
    changes: dict[tuple[str, str], list[tuple[float, int, int]]] = {}
    for node, resources, created, released in db.execute(
        "SELECT node, resources::text, created_at, released_at FROM allocations"
    ):
        for r, q in json.loads(resources).items():
            steps = changes.setdefault((node, r), [])
            steps.append((created, 1, int(q)))
            if released is not None:
                # A release at the same instant as a grant counts first: the
                # grant's check ran after the release committed.
                steps.append((released, 0, -int(q)))
    peaks = []
    for key, steps in changes.items():
        held = 0
        for at, _, delta in sorted(steps):
            held += delta
            if key in capacity and held > capacity[key]:
                peaks.append((*key, at, held, capacity[key]))
                break
    return peaks
