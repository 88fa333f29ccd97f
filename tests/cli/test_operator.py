"""The first hour of an operator, through the real CLI and a real server:
`apportion up` on a busy port changes nothing, the token is easy to get and
the README's curl example works as written after `up`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from e2e.cluster import wait_for
from support import ServerProcess, free_port

README = Path(__file__).resolve().parents[2] / "README.md"


def clean_env(config: Path, **extra: str) -> dict[str, str]:
    """The caller's environment without any apportion setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("APPORTION_") and k != "COLUMNS"}
    env["APPORTION_CONFIG"] = str(config)
    env.update(extra)
    return env


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "apportion.cli.main", *args],
                          env=env, capture_output=True, text=True, timeout=60)


def isolated(tmp_path: Path, **extra: str) -> tuple[Path, dict[str, str]]:
    """A HOME, XDG directories and a CLI config of this test's own."""
    config = tmp_path / "config" / "apportion" / "config.toml"
    config.parent.mkdir(parents=True)
    (tmp_path / "home").mkdir()
    return config, clean_env(config, HOME=str(tmp_path / "home"),
                             XDG_CONFIG_HOME=str(tmp_path / "config"),
                             XDG_DATA_HOME=str(tmp_path / "data"), **extra)


def test_up_on_a_busy_port_changes_nothing(tmp_path: Path) -> None:
    (tmp_path / "server").mkdir()
    server = ServerProcess(tmp_path / "server").start()
    try:
        config, env = isolated(tmp_path)
        config.write_text(f'server = "{server.url}"\ntoken = "{server.token}"\n')
        before = config.read_bytes()
        proc = run(env, "up", "--port", str(server.port))
        assert proc.returncode == 1, (proc.stdout, proc.stderr)
        assert proc.stdout == ""
        [line] = proc.stderr.splitlines()
        assert line.startswith(f"error: port {server.port} on 127.0.0.1 is in use"), line
        assert "nothing was started or changed" in line
        assert config.read_bytes() == before
        assert not (tmp_path / "data").exists()
        # The CLI still talks to the server that runs there.
        listed = run(env, "nodes", "list", "--json")
        assert (listed.returncode, json.loads(listed.stdout)) == (0, []), listed.stderr
    finally:
        server.stop()


def test_token_show_prints_the_token_every_command_would_send(tmp_path: Path) -> None:
    config, env = isolated(tmp_path)
    proc = run(env, "token", "show")
    assert proc.returncode == 1
    assert proc.stderr == (
        f"error: no token: none given by --token or APPORTION_TOKEN, and none in {config}; "
        "run 'apportion up' or 'apportion token create'\n"
    )
    config.write_text('server = "http://127.0.0.1:9"\ntoken = "apt_from_config"\n')
    assert run(env, "token", "show").stdout == "apt_from_config\n"
    assert json.loads(run(env, "token", "show", "--json").stdout) == {
        "server": "http://127.0.0.1:9", "token": "apt_from_config"}
    # The same order as every other command: the environment, then flags, win.
    env["APPORTION_TOKEN"] = "apt_from_env"
    assert run(env, "token", "show").stdout == "apt_from_env\n"
    assert run(env, "token", "show", "--token", "apt_from_flag").stdout == "apt_from_flag\n"


def _readme_curl() -> str:
    """The README's curl example, as a shell command."""
    text = README.read_text()
    match = re.search(r"^\$ (curl .*?\\\n.*?)\n", text, re.S | re.M)
    assert match, "the README has no curl example"
    return match.group(1)


@pytest.mark.usefixtures("fallback_sandboxes")  # `up` as root: tasks' directories go there
def test_up_says_how_to_sign_in_and_the_readme_curl_works(tmp_path: Path) -> None:
    port = free_port()
    _, env = isolated(tmp_path, APPORTION_LOG_LEVEL="WARNING")
    # `apportion` on the PATH, as in the README's activated .venv.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    log_path = tmp_path / "up.log"
    with log_path.open("ab") as log:
        up = subprocess.Popen(
            [sys.executable, "-m", "apportion.cli.main", "up", "--port", str(port)],
            env={**env, "COLUMNS": "80"}, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "stop with Ctrl-C" not in log_path.read_text():
            assert up.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        said = log_path.read_text()
        url = f"http://127.0.0.1:{port}"
        assert f"dashboard: {url}/  sign in with the token that 'apportion token show' prints" \
            in said
        assert f'API: curl -H "Authorization: Bearer $(apportion token show)" {url}/api/v1/nodes' \
            in said
        token = run(env, "token", "show").stdout.strip()
        assert token.startswith("apt_") and token not in said

        command = _readme_curl().replace("http://127.0.0.1:8080", url)
        done = subprocess.run(["bash", "-c", command], env=env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, (command, done.stderr)
        granted = json.loads(done.stdout)
        assert (granted["state"], granted["resources"]) == (
            "active", {"cpu": "500m", "memory": "1Gi"})
        # The API call the banner shows works as printed, too.
        shown = said.split("API: ", 1)[1].splitlines()[0]
        nodes = subprocess.run(["bash", "-c", "curl -sf " + shown[len("curl "):]], env=env,
                               capture_output=True, text=True, timeout=60)
        assert json.loads(nodes.stdout)["count"] == 1, nodes.stderr

        # A job runs here; Ctrl-C says what `up` waits for and that the job fails.
        job = json.loads(run(env, "submit", "--cpu", "100m", "--name", "long", "--json", "--",
                             "sleep", "600").stdout)
        wait_for("the job to run", lambda: json.loads(run(
            env, "jobs", "show", job["id"], "--json").stdout)["state"] == "running", 60)
        up.send_signal(signal.SIGINT)
        up.wait(60)
        said = log_path.read_text()
        assert ("stopping apportion: waiting up to 3 s for open requests, then up to 15 s for "
                "the local agent to stop its tasks (Ctrl-C again stops at once)\n"
                "warning: 1 task(s) of running jobs on this machine are stopped, and those jobs "
                "fail\n") in said, said
        assert "apportion is down\n" in said, said
    finally:
        up.terminate()
        try:
            up.wait(15)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait(5)


# -- nodes and jobs through a shared server --------------------------------------------------


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("operator")).start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def env(shared: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    config = tmp_path_factory.mktemp("operator-config") / "config.toml"
    config.write_text(f'server = "{shared.url}"\ntoken = "{shared.token}"\n')
    return clean_env(config)


@pytest.fixture
def api(shared: ServerProcess) -> Iterator[httpx.Client]:
    with shared.client() as client:
        yield client


def test_nodes_update_changes_resources_and_labels(env: dict[str, str],
                                                   api: httpx.Client) -> None:
    r = api.post("/api/v1/nodes", json={"name": "upd-1", "resources": {"cpu": "4",
                 "memory": "8Gi"}, "labels": {"type": "cpu"}})
    assert r.status_code == 201, r.text
    proc = run(env, "nodes", "update", "upd-1", "--labels", "facility=texas-2,type=cpu")
    assert (proc.returncode, proc.stdout) == (
        0, "updated node upd-1: cpu=4,memory=8Gi; labels facility=texas-2,type=cpu\n"
    ), proc.stderr
    node = json.loads(run(env, "nodes", "update", "upd-1", "--resources", "cpu=8,memory=8Gi",
                          "--json").stdout)
    assert (node["resources"], node["labels"]) == (
        {"cpu": "8", "memory": "8Gi"}, {"facility": "texas-2", "type": "cpu"})
    assert api.get("/api/v1/nodes/upd-1").json()["resources"] == {"cpu": "8", "memory": "8Gi"}

    # Below what is allocated, a bad quantity, an unknown node, nothing to change.
    r = api.post("/api/v1/allocations", json={"resources": {"cpu": "3"}, "node": "upd-1"})
    assert r.status_code == 201, r.text
    proc = run(env, "nodes", "update", "upd-1", "--resources", "cpu=2,memory=8Gi")
    assert proc.returncode != 0 and proc.stderr.startswith("error (409): resources.cpu"), \
        proc.stderr
    proc = run(env, "nodes", "update", "upd-1", "--resources", "cpu=lots")
    assert proc.returncode != 0 and proc.stderr.startswith(
        "error (422): resources.cpu: cannot parse 'lots'"), proc.stderr
    proc = run(env, "nodes", "update", "nowhere", "--labels", "a=b")
    assert proc.returncode != 0 and proc.stderr == "error (404): node nowhere not found\n"
    proc = run(env, "nodes", "update", "upd-1")
    assert proc.returncode == 2 and "give --resources, --labels or both" in proc.stderr
    assert api.get("/api/v1/nodes/upd-1").json()["resources"] == {"cpu": "8", "memory": "8Gi"}


def test_a_resource_no_node_has_is_named(env: dict[str, str], api: httpx.Client) -> None:
    r = api.post("/api/v1/nodes", json={"name": "lic-0", "resources": {"cpu": "2"}})
    assert r.status_code == 201, r.text
    r = api.post("/api/v1/jobs", json={"resources": {"cpu": "1", "licence.matlab": 1}})
    assert r.status_code == 422
    assert (r.json()["message"], r.json()["field"]) == (
        "resources.licence.matlab: no node has licence.matlab", "resources.licence.matlab")
    proc = run(env, "submit", "--cpu", "1", "--resource", "licence.matlab=1")
    assert proc.stderr == "error (422): resources.licence.matlab: no node has licence.matlab\n"
    proc = run(env, "alloc", "--resource", "licence.matlab=1")
    assert proc.stderr == "error (409): resources.licence.matlab: no node has licence.matlab\n"

    # When one node has it and it is taken, the others say they have none.
    r = api.post("/api/v1/nodes", json={"name": "lic-1",
                                        "resources": {"cpu": "1", "licence.matlab": 1}})
    assert r.status_code == 201, r.text
    assert api.post("/api/v1/allocations",
                    json={"resources": {"licence.matlab": 1}}).status_code == 201
    r = api.post("/api/v1/allocations", json={"resources": {"licence.matlab": 1}})
    assert r.status_code == 409
    assert "node lic-0 has no licence.matlab" in r.json()["message"]
    assert "Insufficient licence.matlab on node lic-1: 0 available, 1 requested" \
        in r.json()["message"]
    assert "0 available, 1 requested" not in r.json()["message"].split("lic-1")[0]
    assert {"node": "lic-0", "resource": "licence.matlab", "available": "0",
            "requested": "1", "available_base": 0, "requested_base": 1,
            "offered": False} in r.json()["shortages"]


def test_every_constraint_is_parsed_at_submission(env: dict[str, str],
                                                  api: httpx.Client) -> None:
    r = api.post("/api/v1/nodes", json={"name": "con-1", "resources": {"cpu": "2", "gpu": 1}})
    assert r.status_code == 201, r.text
    for body in ({"resources": {"cpu": "1"}}, {"resources": {"gpu": 1}}):
        r = api.post("/api/v1/jobs", json={**body, "constraints": ["gpu.memory>=lots"]})
        assert r.status_code == 422, r.text
        assert (r.json()["field"], r.json()["message"]) == (
            "constraints",
            "constraints: gpu.memory>=lots: 'lots' is not a size such as 40Gi or 80G")
    r = api.post("/api/v1/jobs", json={"resources": {"gpu": 1},
                                       "constraints": ["gpu.cores>2x"]})
    assert (r.status_code, r.json()["message"]) == (
        422, "constraints: gpu.cores>2x: '2x' is not a whole number")
    proc = run(env, "submit", "--cpu", "1", "-c", "gpu.memory>=lots")
    assert proc.returncode != 0
    assert proc.stderr == ("error (422): constraints: gpu.memory>=lots: 'lots' is not a size "
                           "such as 40Gi or 80G\n")
    # A comparison that parses is still accepted.
    r = api.post("/api/v1/jobs", json={"resources": {"cpu": "1"},
                                       "constraints": ["gpu.memory>=40Gi"]})
    assert r.status_code == 201, r.text
