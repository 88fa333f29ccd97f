"""The local provider with real child processes: a stand-in agent (a small
Python script that records its argv and environment, then sleeps) for the
process handling, and the real ``apportion agent`` joining a real server."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from apportion.exceptions import InvalidInput, ProviderConfigError
from apportion.providers import get
from apportion.providers.base import InstanceState, JoinSpec
from apportion.providers.local import LocalProvider
from apportion.providers.secret import Secret

GiB = 1 << 30
TOKEN = "join-0123456789abcdef"
JOIN = JoinSpec("http://127.0.0.1:9", Secret(TOKEN), {"facility": "lab"})
NODE_TYPES = [
    {"name": "small", "resources": {"cpu": "2", "memory": "1Gi"}, "price_per_hour": 0.0},
    {"name": "gpu", "resources": {"cpu": "500m", "gpu": 2}, "labels": {"type": "gpu"}},
]

STANDIN = r'''
import json, os, signal, subprocess, sys, time
args = sys.argv[1:]
work_dir = args[args.index("--work-dir") + 1]
mode = os.environ.get("STANDIN_MODE", "sleep")
record = {"argv": args, "token": os.environ.get("APPORTION_TOKEN"),
          "server": os.environ.get("APPORTION_SERVER"),
          "admin": os.environ.get("APPORTION_ADMIN_TOKEN"),
          "extra": os.environ.get("EXTRA"), "pid": os.getpid(), "pgid": os.getpgid(0),
          "sid": os.getsid(0)}
if mode == "fork":
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    record["grandchild"] = child.pid
if mode == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
with open(os.path.join(work_dir, "standin.json.tmp"), "w") as f:
    json.dump(record, f)
os.replace(os.path.join(work_dir, "standin.json.tmp"), os.path.join(work_dir, "standin.json"))
if mode == "exit":
    sys.exit(3)
time.sleep(60)
'''


@pytest.fixture
def standin(tmp_path: Path) -> Path:
    path = tmp_path / "standin.py"
    path.write_text(STANDIN)
    return path


def _command(script: Path) -> list[str]:
    return ["{python}", str(script), "--server", "{server}", "--name", "{name}",
            "--resources", "{resources}", "--labels", "{labels}", "--work-dir", "{work_dir}",
            "--pool={pool}", "--type={node_type}"]


@pytest.fixture
def make(tmp_path: Path, standin: Path) -> Iterator[Callable[..., LocalProvider]]:
    built: list[LocalProvider] = []

    def build(**extra: object) -> LocalProvider:
        settings = {"state_dir": str(tmp_path / "state"), "node_types": NODE_TYPES,
                    "command": _command(standin), "grace_s": 2.0, **extra}
        provider = LocalProvider("local", settings)
        built.append(provider)
        return provider

    yield build
    # Every process a test started goes, whatever the test did.
    state = tmp_path / "state" / "nodes.json"
    if state.exists():
        for record in json.loads(state.read_text())["nodes"].values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(record["pid"], signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(record["pid"], 0)


def _recorded(provider: LocalProvider, name: str, timeout: float = 10.0) -> dict[str, object]:
    path = provider.state_dir / "nodes" / name / "work" / "standin.json"
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"stand-in never wrote {path}"
        time.sleep(0.02)
    data: dict[str, object] = json.loads(path.read_text())
    return data


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_create_starts_agents_with_declared_resources(
    make: Callable[..., LocalProvider], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APPORTION_ADMIN_TOKEN", "admin-secret")
    provider = make(env={"EXTRA": Secret("from-config")})
    nodes = provider.create("dev", "small", 2, JOIN)
    assert [n.state for n in nodes] == [InstanceState.RUNNING, InstanceState.RUNNING]
    assert [(n.pool, n.node_type, n.provider, n.address) for n in nodes] == [
        ("dev", "small", "local", "127.0.0.1")] * 2
    for node in nodes:
        assert node.id == node.node_name
        assert node.node_name.startswith("dev-") and len(node.node_name) == len("dev-") + 6
        work_dir = provider.state_dir / "nodes" / node.node_name / "work"
        seen = _recorded(provider, node.node_name)
        assert seen["argv"] == [
            "--server", "http://127.0.0.1:9", "--name", node.node_name,
            "--resources", "cpu=2,memory=1Gi",
            "--labels", "facility=lab,node-type=small,pool=dev,provider=local",
            "--work-dir", str(work_dir), "--pool=dev", "--type=small",
        ]
        assert seen["token"] == TOKEN  # through the environment ...
        assert TOKEN not in " ".join(psutil.Process(int(seen["pid"])).cmdline())  # ... not argv
        assert seen["server"] == "http://127.0.0.1:9"
        assert seen["admin"] is None  # the server's APPORTION_* are not passed on
        assert seen["extra"] == "from-config"
        assert seen["pid"] == seen["pgid"] == seen["sid"]  # its own session
    state = (provider.state_dir / "nodes.json").read_text()
    assert TOKEN not in state
    assert sorted(json.loads(state)["nodes"]) == sorted(n.id for n in nodes)
    assert [n.id for n in provider.list("dev")] == [n.id for n in nodes]
    assert provider.list("other") == []
    provider.terminate([n.id for n in nodes])


def test_node_type_labels_and_fractional_cpu(make: Callable[..., LocalProvider]) -> None:
    provider = make()
    (node,) = provider.create("gpus", "gpu", 1, JoinSpec("http://127.0.0.1:9", TOKEN))
    argv = _recorded(provider, node.node_name)["argv"]
    assert isinstance(argv, list)
    assert argv[4:8] == ["--resources", "cpu=500m,gpu=2",
                         "--labels", "node-type=gpu,pool=gpus,provider=local,type=gpu"]
    provider.terminate([node.id])


def test_discovering_agents_get_no_resources_flag(make: Callable[..., LocalProvider]) -> None:
    provider = make(declare_resources=False)
    (node,) = provider.create("dev", "small", 1, JOIN)
    argv = _recorded(provider, node.node_name)["argv"]
    assert isinstance(argv, list)
    assert argv[:4] == ["--server", "http://127.0.0.1:9", "--name", node.node_name]
    assert argv[4:6] == ["--labels", "facility=lab,node-type=small,pool=dev,provider=local"]
    provider.terminate([node.id])


def test_restarted_provider_finds_its_nodes(
    make: Callable[..., LocalProvider], tmp_path: Path
) -> None:
    first = make()
    (node,) = first.create("dev", "small", 1, JOIN)
    pid = int(_recorded(first, node.node_name)["pid"])
    again = LocalProvider("local", {"state_dir": str(tmp_path / "state"),
                                    "node_types": NODE_TYPES})
    (found,) = again.list()
    assert (found.id, found.state, found.created_at) == (node.id, InstanceState.RUNNING,
                                                         node.created_at)
    assert again.status(node.id).state is InstanceState.RUNNING
    (done,) = again.terminate([node.id])
    assert done.state is InstanceState.TERMINATED
    assert _gone(pid)
    assert first.status(node.id).state is InstanceState.TERMINATED
    assert first.list() == []


def test_terminate_sigterm_then_sigkill_the_group(
    make: Callable[..., LocalProvider], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STANDIN_MODE", "ignore-term")
    provider = make(grace_s=0.5)
    (stubborn,) = provider.create("dev", "small", 1, JOIN)
    monkeypatch.setenv("STANDIN_MODE", "fork")
    (forking,) = provider.create("dev", "small", 1, JOIN)
    seen_stubborn = _recorded(provider, stubborn.node_name)
    seen_forking = _recorded(provider, forking.node_name)
    grandchild = int(seen_forking["grandchild"])
    assert psutil.Process(grandchild).is_running()
    started = time.monotonic()
    out = provider.terminate([stubborn.id, forking.id])
    took = time.monotonic() - started
    assert [n.state for n in out] == [InstanceState.TERMINATED, InstanceState.TERMINATED]
    assert 0.5 <= took < 3.0  # one grace for both, then SIGKILL
    assert _gone(int(seen_stubborn["pid"]))
    assert _gone(int(seen_forking["pid"]))
    deadline = time.monotonic() + 5
    while not _gone(grandchild) and time.monotonic() < deadline:  # reaped by init
        time.sleep(0.02)
    assert _gone(grandchild)
    # Idempotent, and unknown ids are simply terminated.
    again = provider.terminate([stubborn.id, "nope"])
    assert [(n.id, n.state) for n in again] == [(stubborn.id, InstanceState.TERMINATED),
                                                ("nope", InstanceState.TERMINATED)]
    assert again[1].detail == "unknown to this provider"


def test_agent_that_exits_is_failed(
    make: Callable[..., LocalProvider], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STANDIN_MODE", "exit")
    provider = make()
    (node,) = provider.create("dev", "small", 1, JOIN)
    _recorded(provider, node.node_name)
    deadline = time.monotonic() + 10
    while provider.status(node.id).state is InstanceState.RUNNING:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    status = provider.status(node.id)
    log = provider.state_dir / "nodes" / node.node_name / "agent.log"
    assert status.state is InstanceState.FAILED
    assert status.detail.endswith(f"exited with code 3; see {log}")
    assert [n.state for n in provider.list()] == [InstanceState.FAILED]  # still listed
    (done,) = provider.terminate([node.id])
    assert done.state is InstanceState.TERMINATED
    assert provider.list() == []


def test_reused_pid_is_not_signalled(make: Callable[..., LocalProvider]) -> None:
    provider = make()
    (node,) = provider.create("dev", "small", 1, JOIN)
    path = provider.state_dir / "nodes.json"
    data = json.loads(path.read_text())
    real_pid = data["nodes"][node.id]["pid"]
    # The record now points at this test process, as if its pid had been reused.
    data["nodes"][node.id].update(pid=os.getpid(), started=12345.0)
    path.write_text(json.dumps(data))
    status = provider.status(node.id)
    assert status.state is InstanceState.FAILED
    (done,) = provider.terminate([node.id])  # must not SIGTERM pytest
    assert done.state is InstanceState.TERMINATED
    os.killpg(real_pid, signal.SIGKILL)
    os.waitpid(real_pid, 0)


def test_status_of_unknown_id(make: Callable[..., LocalProvider]) -> None:
    status = make().status("dev-000000")
    assert (status.id, status.state, status.provider, status.detail) == (
        "dev-000000", InstanceState.TERMINATED, "local", "unknown to this provider")


def test_bad_requests(make: Callable[..., LocalProvider]) -> None:
    provider = make()
    with pytest.raises(InvalidInput, match=r"count: expected a whole number >= 1, got 0"):
        provider.create("dev", "small", 0, JOIN)
    with pytest.raises(InvalidInput, match=r"unknown node type 'huge' \(offered: small, gpu\)"):
        provider.create("dev", "huge", 1, JOIN)
    with pytest.raises(InvalidInput, match=r"pool: 'Dev' is not a valid pool name"):
        provider.create("Dev", "small", 1, JOIN)
    with pytest.raises(InvalidInput, match=r"labels: zone='a,b'"):
        provider.create("dev", "small", 1, JoinSpec("http://x:1", TOKEN, {"zone": "a,b"}))
    with pytest.raises(InvalidInput, match=r"join.server_url"):
        provider.create("dev", "small", 1, JoinSpec("http://x:1 ;rm", TOKEN))
    assert provider.list() == []


def test_bad_settings(tmp_path: Path) -> None:
    with pytest.raises(ProviderConfigError, match=r"providers.l.command: '\{token\}': unknown"):
        LocalProvider("l", {"state_dir": str(tmp_path), "command": ["{python}", "{token}"]})
    with pytest.raises(ProviderConfigError, match=r"providers.l.command: expected a non-empty"):
        LocalProvider("l", {"state_dir": str(tmp_path), "command": "apportion agent"})
    with pytest.raises(ProviderConfigError, match=r"providers.l.grace_s: expected seconds"):
        LocalProvider("l", {"state_dir": str(tmp_path), "grace_s": -1})


def test_missing_program_is_a_provider_error(tmp_path: Path) -> None:
    from apportion.exceptions import ProviderError

    provider = LocalProvider("l", {"state_dir": str(tmp_path), "node_types": NODE_TYPES,
                                   "command": [str(tmp_path / "no-such-agent")]})
    with pytest.raises(ProviderError, match="could not start") as info:
        provider.create("dev", "small", 1, JOIN)
    assert info.value.nodes == []


# -- the real agent ------------------------------------------------------------------


def _agent_runs() -> str | None:
    """Why the real agent cannot be used here, or None when it can."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "apportion.cli.main", "agent", "--help"],
            capture_output=True, timeout=60, text=True,
        )
    except subprocess.TimeoutExpired:
        return "`apportion agent --help` did not finish in 60 s"
    if done.returncode != 0:
        return f"`apportion agent --help` failed ({done.returncode}): {done.stderr[-300:]}"
    return None


@pytest.mark.usefixtures("fallback_sandboxes")  # as root, the agent's tasks' directories
def test_real_agent_joins_and_leaves(tmp_path: Path) -> None:
    why = _agent_runs()
    if why:
        pytest.skip(f"the agent command is not available yet: {why}")
    from support import ServerProcess

    server = ServerProcess(tmp_path / "server")
    server.data_dir.mkdir()
    server.start()
    provider = get("local", {"state_dir": str(tmp_path / "state"), "node_types": NODE_TYPES,
                             "grace_s": 10.0})
    nodes = []
    try:
        # Until the server mints one-time join tokens, an agent token may
        # register only the node named like it: name the node accordingly.
        name = "dev-e2e001"
        with server.client() as c:
            token = c.post("/api/v1/tokens", json={"name": name, "role": "agent"}).json()
        nodes = provider.create("dev", "small", 1,
                                JoinSpec(server.url, token["token"], node_names=(name,)))
        assert nodes[0].node_name == name
        deadline = time.monotonic() + 30
        node: dict[str, object] = {}
        with server.client() as c:
            while time.monotonic() < deadline:
                response = c.get(f"/api/v1/nodes/{name}")
                if response.status_code == 200:
                    node = response.json()
                    break
                assert provider.status(nodes[0].id).state is InstanceState.RUNNING, (
                    provider.status(nodes[0].id).detail)
                time.sleep(0.1)
        assert node, f"the agent never registered; log:\n{_log(provider, name)}"
        base = node["resources_base"]
        assert isinstance(base, dict)
        assert (base["cpu"], base["memory"]) == (2000, GiB)  # declared from the node type
        labels = node["labels"]
        assert isinstance(labels, dict)
        assert {k: labels[k] for k in ("pool", "provider", "node-type")} == {
            "pool": "dev", "provider": "local", "node-type": "small"}
        (done,) = provider.terminate([nodes[0].id])
        assert done.state is InstanceState.TERMINATED
    finally:
        if nodes:
            provider.terminate([n.id for n in nodes])
        server.stop()


def _log(provider: LocalProvider, name: str) -> str:
    try:
        return (provider.state_dir / "nodes" / name / "agent.log").read_text()[-3000:]
    except OSError:
        return "(no log)"


def test_a_pool_overrides_command_env_and_declare_resources(
    make: Callable[..., LocalProvider], standin: Path
) -> None:
    provider = make(env={"EXTRA": "provider"}, pools={
        "gpus": {"env": {"EXTRA": "pool"}, "declare_resources": False},
        "tagged": {"command": [*_command(standin), "--tag=tagged"]},
    })
    (plain,) = provider.create("dev", "small", 1, JOIN)
    (gpus,) = provider.create("gpus", "small", 1, JOIN)
    (tagged,) = provider.create("tagged", "small", 1, JOIN)
    seen = {n.pool: _recorded(provider, n.node_name) for n in (plain, gpus, tagged)}
    assert {pool: s["extra"] for pool, s in seen.items()} == {
        "dev": "provider", "gpus": "pool", "tagged": "provider"}
    argv = {pool: s["argv"] for pool, s in seen.items()}
    assert "--resources" in argv["dev"] and "--resources" not in argv["gpus"]
    assert argv["tagged"][-1] == "--tag=tagged" and argv["dev"][-1] == "--type=small"
    provider.terminate([plain.id, gpus.id, tagged.id])


def test_a_bad_pool_override_fails_at_start(tmp_path: Path) -> None:
    with pytest.raises(ProviderConfigError, match=r"pools.gpus.settings.command: '\{token\}'"):
        LocalProvider("l", {"state_dir": str(tmp_path),
                            "pools": {"gpus": {"command": ["{python}", "{token}"]}}})
    with pytest.raises(ProviderConfigError, match=r"pools.gpus.settings.env: expected a table"):
        LocalProvider("l", {"state_dir": str(tmp_path), "pools": {"gpus": {"env": "X=1"}}})
