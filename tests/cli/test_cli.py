"""The real ``apportion`` CLI, run as subprocesses against a real server:
table output carries the literal numbers, ``--json`` carries the API's data,
and server and token come from flags, the environment or the config file."""

from __future__ import annotations

import getpass
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from support import ServerProcess, free_port

ALLOC_ID = r"[0-9a-f]{32}"
ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z"


def clean_env(config: Path, **extra: str) -> dict[str, str]:
    """The caller's environment without any apportion setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("APPORTION_") and k != "COLUMNS"}
    env["APPORTION_CONFIG"] = str(config)
    env.update(extra)
    return env


def write_config(path: Path, server: str, token: str) -> Path:
    path.write_text(f'server = "{server}"\ntoken = "{token}"\n')
    return path


def run(env: dict[str, str], *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "apportion.cli.main", *args],
        env=env, capture_output=True, text=True, timeout=60,
    )
    if ok:
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    return proc


def run_json(env: dict[str, str], *args: str) -> Any:
    return json.loads(run(env, *args, "--json").stdout)


def rows(table: str) -> list[list[str]]:
    """The body rows of the rich tables in ``table``, as lists of cells."""
    return [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in table.splitlines()
        if line.strip().startswith("│")
    ]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("cli")).start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def env(shared: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A CLI environment whose only setting is the config file."""
    config = tmp_path_factory.mktemp("cli-config") / "config.toml"
    return clean_env(write_config(config, shared.url, shared.token))


@pytest.fixture
def api(shared: ServerProcess) -> Iterator[httpx.Client]:
    with shared.client() as client:
        yield client


def _node(api: httpx.Client, body: dict[str, Any]) -> None:
    r = api.post("/api/v1/nodes", json=body)
    assert r.status_code == 201, r.text


def _grant(api: httpx.Client, **body: Any) -> dict[str, Any]:
    r = api.post("/api/v1/allocations", json=body)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


# -- nodes ---------------------------------------------------------------------------


def test_nodes_add_from_flags(env: dict[str, str], api: httpx.Client) -> None:
    out = run(env, "nodes", "add", "add-1", "--resources", "cpu=8,memory=16Gi,gpu=2",
              "--labels", "facility=texas-1,type=gpu").stdout
    assert out == "registered node add-1: cpu=8,memory=16Gi,gpu=2\n"
    node = api.get("/api/v1/nodes/add-1").json()
    assert node["resources_base"] == {"cpu": 8000, "memory": 17179869184, "gpu": 2}
    assert node["labels"] == {"facility": "texas-1", "type": "gpu"}


def test_nodes_add_from_a_file_as_json(
    env: dict[str, str], api: httpx.Client, tmp_path: Path
) -> None:
    body = ('{"name": "add-2", "resources": {"cpu": "8", "memory": "16Gi", "gpu": 2}, '
            '"devices": {"gpu": [{"id": "0", "model": "H100", "memory": "80Gi"}, '
            '{"id": "1", "model": "H100", "memory": "80Gi"}]}, '
            '"labels": {"facility": "texas-1", "type": "gpu"}}')
    (tmp_path / "node.json").write_text(body)
    shown = run_json(env, "nodes", "add", "--file", str(tmp_path / "node.json"))
    stored = api.get("/api/v1/nodes/add-2").json()
    listed = ("allocations", "allocations_total")
    assert shown == {k: v for k, v in stored.items() if k not in listed}
    assert shown["resources"] == {"cpu": "8", "memory": "16Gi", "gpu": "2"}
    assert [d["model"] for d in shown["devices"]["gpu"]] == ["H100", "H100"]


def test_nodes_add_refused_prints_the_servers_message(env: dict[str, str]) -> None:
    run(env, "nodes", "add", "dup-1", "--resources", "cpu=1")
    proc = run(env, "nodes", "add", "dup-1", "--resources", "cpu=1", ok=False)
    assert proc.returncode == 4  # a conflict
    assert proc.stderr == "error (409): node dup-1 already exists\n"
    proc = run(env, "nodes", "add", "bad-1", "--resources", "cpu=-1", ok=False)
    assert proc.returncode == 1  # invalid input: neither usage (2) nor a refusal
    assert proc.stderr == "error (422): resources.cpu: '-1' is negative; quantities are >= 0\n"


def test_nodes_add_with_a_bad_file_is_a_usage_error_not_a_traceback(
    env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "bad.json").write_text("{name: n1}")
    (tmp_path / "list.json").write_text("[1]")
    cases = {
        "bad.json": "Invalid value for --file: {} is not JSON: Expecting property name "
        "enclosed in double quotes: line 1 column 2 (char 1)",
        "missing.json": "Invalid value for --file: cannot read {}: No such file or directory",
        "list.json": "Invalid value for --file: {} must hold a JSON object (the API's node body)",
    }
    for name, message in cases.items():
        path = tmp_path / name
        wide = env | {"COLUMNS": "1000"}  # keep rich from folding the long path
        proc = run(wide, "nodes", "add", "--file", str(path), ok=False)
        assert proc.returncode == 2
        assert "Traceback" not in proc.stderr
        flat = " ".join(proc.stderr.replace("│", " ").split())
        assert message.format(path) in flat, proc.stderr


@pytest.fixture(scope="module")
def listed(shared: ServerProcess) -> dict[str, Any]:
    """Two nodes in a facility of their own, one with an allocation."""
    with shared.client() as c:
        _node(c, {"name": "ls-1", "resources": {"cpu": "8", "memory": "16Gi"},
                  "labels": {"facility": "cli-ls", "type": "cpu"}})
        _node(c, {"name": "ls-2", "resources": {"cpu": "500m", "gpu": 1},
                  "devices": {"gpu": [{"id": "0", "model": "A100"}]},
                  "labels": {"facility": "cli-ls", "type": "gpu", "gpu.model": "A100"}})
        return _grant(c, resources={"cpu": "2", "memory": "4Gi"}, node="ls-1", owner="alice")


def test_nodes_list_shows_total_allocated_available_per_resource(
    env: dict[str, str], listed: dict[str, Any]
) -> None:
    out = run(env, "nodes", "list", "--facility", "cli-ls").stdout
    assert "2 node(s)" in out
    assert rows(out) == [
        ["ls-1", "ready", "healthy", "cpu", "8", "2", "6"],
        ["", "", "", "memory", "16Gi", "4Gi", "12Gi"],
        ["ls-2", "ready", "healthy", "cpu", "500m", "0", "500m"],
        ["", "", "", "gpu", "1", "0", "1"],
    ]


def test_nodes_list_json_is_the_apis_list(
    env: dict[str, str], api: httpx.Client, listed: dict[str, Any]
) -> None:
    nodes = run_json(env, "nodes", "list", "--facility", "cli-ls")
    assert nodes == api.get("/api/v1/nodes", params={"facility": "cli-ls"}).json()["nodes"]
    assert [n["available_base"] for n in nodes] == [
        {"cpu": 6000, "memory": 12884901888}, {"cpu": 500, "gpu": 1}
    ]


def test_nodes_list_filters(env: dict[str, str], listed: dict[str, Any]) -> None:
    def names(*args: str) -> list[str]:
        return [n["name"] for n in run_json(env, "nodes", "list", *args)]

    assert names("--selector", "facility=cli-ls,gpu.model=A100") == ["ls-2"]
    assert names("-l", "facility=cli-ls", "--type", "cpu") == ["ls-1"]
    assert names("--facility", "cli-ls", "--state", "cordoned") == []
    assert names("--facility", "cli-ls", "--health", "healthy") == ["ls-1", "ls-2"]


def test_nodes_show_adds_utilization_and_allocations(
    env: dict[str, str], listed: dict[str, Any]
) -> None:
    out = run(env, "nodes", "show", "ls-1").stdout
    assert out.splitlines()[0] == (
        'ls-1  state=ready health=healthy  labels={"facility": "cli-ls", "type": "cpu"}'
    )
    resources, allocations = rows(out)[:2], rows(out)[2:]
    assert resources == [
        ["cpu", "8", "2", "6", "25%"],
        ["memory", "16Gi", "4Gi", "12Gi", "25%"],
    ]
    assert len(allocations) == 1
    alloc_id, owner, vector, devices, since = allocations[0]
    assert (alloc_id, owner, vector, devices) == (listed["id"], "alice", "cpu=2,memory=4Gi", "-")
    assert since == listed["created_at"]


def test_nodes_show_lists_devices_and_json_is_the_apis_node(
    env: dict[str, str], api: httpx.Client, listed: dict[str, Any]
) -> None:
    alloc = _grant(api, resources={"gpu": 1}, node="ls-2", owner="bob")
    try:
        out = run(env, "nodes", "show", "ls-2").stdout
        assert rows(out) == [
            ["cpu", "500m", "0", "500m", "0%"],
            ["gpu", "1", "1", "0", "100%"],
            ["gpu", "0", "A100", "-", alloc["id"]],
            [alloc["id"], "bob", "gpu=1", "gpu:0", alloc["created_at"]],
        ]
        shown = run_json(env, "nodes", "show", "ls-2")
        assert shown == api.get("/api/v1/nodes/ls-2").json()
        assert shown["allocations"] == [alloc]
    finally:
        api.delete(f"/api/v1/allocations/{alloc['id']}")


def test_nodes_show_unknown_is_an_error(env: dict[str, str]) -> None:
    proc = run(env, "nodes", "show", "nowhere", ok=False)
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        3, "", "error (404): node nowhere not found\n"
    )


def test_nodes_remove_refuses_active_allocations_unless_forced(
    env: dict[str, str], api: httpx.Client
) -> None:
    _node(api, {"name": "rm-1", "resources": {"cpu": "4"}})
    alloc = _grant(api, resources={"cpu": "1"}, node="rm-1")
    proc = run(env, "nodes", "remove", "rm-1", ok=False)
    assert proc.returncode == 4
    assert proc.stderr == (
        "error (409): node rm-1 has 1 active allocation(s); release them or remove it with "
        "--force (which releases them)\n"
    )
    assert run(env, "nodes", "remove", "rm-1", "--force").stdout == (
        "deleted node rm-1; released 1 allocation(s)\n"
    )
    assert api.get(f"/api/v1/allocations/{alloc['id']}").json()["reason"] == "node_deleted"

    _node(api, {"name": "rm-2", "resources": {"cpu": "4"}})
    assert run_json(env, "nodes", "remove", "rm-2") == {"deleted": "rm-2", "released": []}
    assert api.get("/api/v1/nodes/rm-2").status_code == 404


# -- alloc, release, allocations ---------------------------------------------------------


def test_alloc_prints_the_grant_and_its_devices(env: dict[str, str], api: httpx.Client) -> None:
    _node(api, {"name": "al-1", "resources": {"cpu": "8", "memory": "16Gi", "gpu": 2},
                "devices": {"gpu": [{"id": "0"}, {"id": "1"}]}})
    out = run(env, "alloc", "--cpu", "2", "--memory", "4Gi", "--gpu", "1", "--node", "al-1",
              "--owner", "alice").stdout
    m = re.fullmatch(rf"granted ({ALLOC_ID}) on al-1: cpu=2,memory=4Gi,gpu=1 devices gpu:0\n",
                     out)
    assert m, out
    stored = api.get(f"/api/v1/allocations/{m.group(1)}").json()
    assert (stored["owner"], stored["state"]) == ("alice", "active")
    assert stored["resources_base"] == {"cpu": 2000, "memory": 4294967296, "gpu": 1}


def test_alloc_json_and_custom_resources(env: dict[str, str], api: httpx.Client) -> None:
    _node(api, {"name": "asic-1", "resources": {"cpu": "4", "asic.s19": 8}})
    granted = run_json(env, "alloc", "--cpu", "500m", "--resource", "asic.s19=2",
                       "--node", "asic-1", "--label", "job=mine")
    assert granted == api.get(f"/api/v1/allocations/{granted['id']}").json()
    assert granted["resources"] == {"cpu": "500m", "asic.s19": "2"}
    assert granted["resources_base"] == {"cpu": 500, "asic.s19": 2}
    assert (granted["node"], granted["labels"], granted["state"]) == (
        "asic-1", {"job": "mine"}, "active"
    )


def test_alloc_refused_lists_every_short_resource(env: dict[str, str], api: httpx.Client) -> None:
    _node(api, {"name": "sh-1", "resources": {"cpu": "2", "memory": "1Gi"}})
    proc = run(env, "alloc", "--cpu", "3", "--memory", "2Gi", "--node", "sh-1", ok=False)
    assert (proc.returncode, proc.stdout) == (4, "")
    assert proc.stderr == (
        "error (409): Insufficient cpu on node sh-1: 2 available, 3 requested; "
        "Insufficient memory on node sh-1: 1Gi available, 2Gi requested\n"
    )


def test_alloc_without_a_request_is_a_usage_error(env: dict[str, str]) -> None:
    proc = run(env, "alloc", "--node", "sh-1", ok=False)
    assert proc.returncode == 2
    assert "ask for something: --cpu, --memory, --gpu or --resource" in proc.stderr


def test_release_prints_reason_and_time_and_is_idempotent(
    env: dict[str, str], api: httpx.Client
) -> None:
    _node(api, {"name": "rel-1", "resources": {"cpu": "4"}})
    alloc = _grant(api, resources={"cpu": "1"}, node="rel-1")
    out = run(env, "release", alloc["id"]).stdout
    assert re.fullmatch(rf"released {alloc['id']} on rel-1 \(released at {ISO}\)\n", out), out
    again = run_json(env, "release", alloc["id"])
    assert again == api.get(f"/api/v1/allocations/{alloc['id']}").json()
    assert (again["state"], again["reason"]) == ("released", "released")
    assert again["released_at"] in out

    other = _grant(api, resources={"cpu": "1"}, node="rel-1")
    out = run(env, "release", other["id"], "--reason", "completed").stdout
    assert f"released {other['id']} on rel-1 (completed at " in out
    proc = run(env, "release", "0000", ok=False)
    assert proc.stderr == "error (404): allocation 0000 not found\n"


def test_allocations_list_table_json_and_filters(env: dict[str, str], api: httpx.Client) -> None:
    _node(api, {"name": "al-list", "resources": {"cpu": "8", "memory": "8Gi"}})
    a = _grant(api, resources={"cpu": "1", "memory": "1Gi"}, node="al-list", owner="carol")
    b = _grant(api, resources={"cpu": "250m"}, node="al-list", owner="carol")
    api.delete(f"/api/v1/allocations/{b['id']}", params={"reason": "cancelled"})

    out = run(env, "allocations", "list", "--node", "al-list").stdout
    assert "2 allocation(s)" in out
    assert sorted(rows(out)) == sorted([
        [a["id"], "al-list", "carol", "cpu=1,memory=1Gi", "-", "active", "-"],
        [b["id"], "al-list", "carol", "cpu=250m", "-", "released", "cancelled"],
    ])
    # A narrow terminal folds cells; it never cuts an id short.
    narrow = run(env | {"COLUMNS": "60"}, "allocations", "list", "--node", "al-list").stdout
    assert "…" not in narrow
    assert max(len(line) for line in narrow.splitlines()) <= 60
    first_column = "".join(cells[0] for cells in rows(narrow))
    assert a["id"] in first_column and b["id"] in first_column
    active = run_json(env, "allocations", "list", "--node", "al-list", "--state", "active")
    assert active == [a]
    released = run_json(env, "allocations", "list", "--owner", "carol", "--state", "released")
    assert [x["id"] for x in released] == [b["id"]]
    assert run_json(env, "allocations", "list", "--owner", "nobody-at-all") == []


# -- capacity (its own server: totals are cluster-wide) ----------------------------------


def test_capacity_table_and_json(server: ServerProcess, tmp_path: Path) -> None:
    env = clean_env(write_config(tmp_path / "config.toml", server.url, server.token))
    with server.client() as c:
        _node(c, {"name": "t1", "resources": {"cpu": "8", "memory": "16Gi", "gpu": 2},
                  "labels": {"facility": "texas-1", "type": "gpu"}})
        _node(c, {"name": "o1", "resources": {"cpu": "16", "memory": "32Gi"},
                  "labels": {"facility": "oslo-1", "type": "cpu"}})
        _grant(c, resources={"cpu": "2", "memory": "4Gi", "gpu": 1}, node="t1")
        by_facility = c.get("/api/v1/capacity/summary", params={"group_by": "facility"}).json()

    out = run(env, "capacity").stdout
    assert "capacity by resource" in out
    assert rows(out) == [
        ["cpu", "2", "cpu", "24", "2", "22", "8.3%"],
        ["gpu", "1", "gpu", "2", "1", "1", "50.0%"],
        ["memory", "2", "memory", "48Gi", "4Gi", "44Gi", "8.3%"],
    ]
    out = run(env, "capacity", "--group-by", "facility").stdout
    assert rows(out) == [
        ["oslo-1", "1", "cpu", "16", "0", "16", "0.0%"],
        ["oslo-1", "1", "memory", "32Gi", "0", "32Gi", "0.0%"],
        ["texas-1", "1", "cpu", "8", "2", "6", "25.0%"],
        ["texas-1", "1", "gpu", "2", "1", "1", "50.0%"],
        ["texas-1", "1", "memory", "16Gi", "4Gi", "12Gi", "25.0%"],
    ]
    assert run_json(env, "capacity", "--group-by", "facility") == by_facility
    assert run_json(env, "capacity", "--group-by", "type")["groups"][0]["group"] == "cpu"
    proc = run(env, "capacity", "--group-by", "colour", ok=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error (422): query.group_by: Input should be 'facility'")


# -- tokens and where the CLI finds server and token ----------------------------------------


def test_token_create_prints_the_token_once(env: dict[str, str], shared: ServerProcess) -> None:
    out = run(env, "token", "create", "--role", "user", "--name", "alice").stdout
    assert re.fullmatch(r"apt_[A-Za-z0-9_-]{40,}\n", out), out
    token = out.strip()
    with shared.client(token) as c:
        assert c.get("/api/v1/whoami").json() == {"name": "alice", "role": "user"}
    created = run_json(env, "token", "create", "--role", "agent", "--name", "node-9")
    assert set(created) == {"token", "id", "name", "role", "created_at"}
    assert (created["name"], created["role"]) == ("node-9", "agent")
    with shared.client(created["token"]) as c:
        assert c.get("/api/v1/whoami").json() == {"name": "node-9", "role": "agent"}


def test_a_user_token_cannot_create_tokens(env: dict[str, str], shared: ServerProcess) -> None:
    token = run(env, "token", "create", "--name", "dave").stdout.strip()
    proc = run(env, "token", "create", "--name", "eve", "--token", token, ok=False)
    assert proc.returncode == 5
    assert proc.stderr == "error (403): this needs the admin role; your token (dave) is user\n"


def test_server_and_token_come_from_flags_then_env_then_config(
    shared: ServerProcess, tmp_path: Path
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    config = write_config(tmp_path / "config.toml", dead, "apt_wrong")

    def names(env: dict[str, str], *flags: str) -> list[str]:
        return [n["name"] for n in run_json(env, "nodes", "list", "--type", "none", *flags)]

    # The config alone: a dead server.
    proc = run(clean_env(config), "nodes", "list", ok=False)
    assert proc.returncode == 6
    assert proc.stderr.startswith(f"error: cannot reach the server at {dead} (")
    assert "start one with 'apportion up' or set APPORTION_SERVER" in proc.stderr
    # The environment beats the config ...
    env = clean_env(config, APPORTION_SERVER=shared.url, APPORTION_TOKEN=shared.token)
    assert names(env) == []
    # ... and flags beat the environment.
    env = clean_env(config, APPORTION_SERVER=dead, APPORTION_TOKEN="apt_wrong")
    assert names(env, "--server", shared.url, "--token", shared.token) == []
    # A wrong token from the environment is used (and refused) over the config's.
    write_config(config, shared.url, shared.token)
    proc = run(clean_env(config, APPORTION_TOKEN="apt_wrong"), "nodes", "list", ok=False)
    assert proc.stderr == "error (401): unknown token\n"
    # No token anywhere.
    config.write_text(f'server = "{shared.url}"\n')
    proc = run(clean_env(config), "nodes", "list", ok=False)
    assert proc.stderr == (
        "error (401): missing Authorization header; send 'Authorization: Bearer <token>' "
        "(create one with 'apportion token create')\n"
    )


# -- apportion up ----------------------------------------------------------------------------


class Up:
    """``apportion up`` as a subprocess, with its output in a log file."""

    def __init__(self, env: dict[str, str], port: int, log: Path) -> None:
        self.env, self.log_path = env, log
        self.log = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "apportion.cli.main", "up", "--port", str(port)],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def nodes(self, config: Path, timeout: float = 90) -> list[dict[str, Any]]:
        """Wait until ``apportion nodes list --json`` answers with a node."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if config.exists():
                proc = run(self.env, "nodes", "list", "--json", ok=False)
                if proc.returncode == 0 and json.loads(proc.stdout):
                    return json.loads(proc.stdout)  # type: ignore[no-any-return]
            time.sleep(0.3)
        raise AssertionError(f"no node registered; up log:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


def _local_agent_keeps_its_token_private(env: dict[str, str], up: Up, data_dir: Path) -> None:
    """The agent ``up`` starts gets its token by a 0600 file, not on its
    command line; as root, its tasks run as nobody."""
    [agent] = [p for p in psutil.Process(up.proc.pid).children() if "agent" in p.cmdline()]
    token_file = data_dir / "agent.token"
    assert agent.cmdline()[agent.cmdline().index("--token-file") + 1] == str(token_file)
    assert (token_file.stat().st_mode & 0o777) == 0o600
    secret = token_file.read_text()
    assert secret.startswith("apt_")
    assert not any(secret in arg for arg in agent.cmdline())
    assert secret.encode() not in Path(f"/proc/{agent.pid}/environ").read_bytes()
    proc = run(env, "submit", "--cpu", "1", "--memory", "64Mi", "--wait", "--", "id", "-un")
    assert proc.stdout == ("nobody\n" if os.geteuid() == 0 else f"{getpass.getuser()}\n")


@pytest.mark.usefixtures("fallback_sandboxes")  # `up` as root: tasks' directories go there
def test_up_serves_registers_this_machine_and_configures_the_cli(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "config" / "apportion" / "config.toml"
    env = clean_env(config, XDG_DATA_HOME=str(tmp_path / "data"),
                    XDG_CONFIG_HOME=str(tmp_path / "config"), APPORTION_LOG_LEVEL="WARNING")
    up = Up(env, port, tmp_path / "up.log")
    try:
        [node] = up.nodes(config)
        assert node["name"] == socket.gethostname()
        assert node["resources_base"]["cpu"] == (os.cpu_count() or 0) * 1000
        assert node["resources_base"]["memory"] == psutil.virtual_memory().total
        assert {"type": "cpu", "facility": "local"}.items() <= node["labels"].items()
        assert (node["state"], node["health"]) == ("ready", "healthy")

        text = config.read_text()
        assert text.startswith(f'server = "http://127.0.0.1:{port}"\ntoken = "apt_')
        assert (config.stat().st_mode & 0o777) == 0o600
        assert (tmp_path / "data" / "apportion" / "apportion.db").is_file()
        # Every other command just works, with nothing but the config.
        granted = run_json(env, "alloc", "--cpu", "1", "--memory", "512Mi")
        assert (granted["node"], granted["resources"]) == (
            socket.gethostname(), {"cpu": "1", "memory": "512Mi"}
        )
        token = text.split('token = "')[1].split('"')[0]
        r = httpx.get(f"http://127.0.0.1:{port}/api/v1/whoami",
                      headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert r.json() == {"name": "local-admin", "role": "admin"}
        _local_agent_keeps_its_token_private(env, up, tmp_path / "data" / "apportion")
    finally:
        up.stop()

    # Up again on the same store: the same token, the node refreshed, the
    # allocation still held.
    up = Up(env, port, tmp_path / "up.log")
    try:
        [node] = up.nodes(config)
        assert config.read_text() == text
        assert node["allocated"] == {"cpu": "1", "memory": "512Mi", "storage": "0"}
        assert run_json(env, "allocations", "list", "--state", "active") == [granted]
    finally:
        up.stop()
