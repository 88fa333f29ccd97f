"""Exit statuses say what happened, and ``--json`` errors are one JSON object
on stdout: the real CLI against a real server (and a closed port, and a
server that never answers), as the README's "Exit codes" table promises."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer

from apportion.cli.output import api_errors
from apportion.client import Client
from support import ServerProcess, free_port

KEYS = ["error", "message", "status"]


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "apportion.cli.main", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def json_error(env: dict[str, str], *args: str) -> tuple[int, dict[str, Any]]:
    """Run with ``--json``: (exit status, the error object); nothing on stderr."""
    proc = cli(env, *args, "--json")
    assert proc.stderr == "", proc.stderr
    body = json.loads(proc.stdout)
    assert list(body)[:3] == KEYS, body
    return proc.returncode, body


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("exit")).start()
    try:
        with proc.client() as api:
            r = api.post("/api/v1/nodes", json={"name": "ex-1", "resources": {"cpu": "2"}})
            assert r.status_code == 201, r.text
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def env(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    config = tmp_path_factory.mktemp("exit-config") / "config.toml"
    config.write_text(f'server = "{server.url}"\ntoken = "{server.token}"\n')
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("APPORTION_") and k != "COLUMNS"}
    return clean | {"APPORTION_CONFIG": str(config)}


def test_not_found_exits_3(env: dict[str, str]) -> None:
    proc = cli(env, "jobs", "show", "j-nothing")
    assert proc.returncode == 3
    assert proc.stdout == ""
    assert proc.stderr.startswith("error (404): ")
    code, body = json_error(env, "nodes", "show", "nowhere")
    # The server's other fields (here the node asked for) follow the three.
    assert (code, body) == (3, {"error": "node_not_found", "message": "node nowhere not found",
                                "status": 404, "node": "nowhere"})


def test_lack_of_resources_and_conflicts_exit_4(env: dict[str, str]) -> None:
    code, body = json_error(env, "alloc", "--cpu", "3", "--node", "ex-1")
    assert (code, body["error"], body["status"]) == (4, "insufficient_resources", 409)
    assert "Insufficient cpu on node ex-1" in body["message"]
    # A job no node can ever hold is refused for lack of resources too.
    code, body = json_error(env, "submit", "--cpu", "64")
    assert (code, body["error"], body["status"], body["field"]) == (4, "job_rejected", 422,
                                                                     "tasks")
    proc = cli(env, "nodes", "add", "ex-1", "--resources", "cpu=1")
    assert (proc.returncode, proc.stderr) == (4, "error (409): node ex-1 already exists\n")


def test_unauthorized_exits_5(env: dict[str, str], server: ServerProcess) -> None:
    code, body = json_error(env, "nodes", "list", "--token", "apt_wrong")
    assert (code, body) == (5, {"error": "unauthenticated", "message": "unknown token",
                                "status": 401})
    user = cli(env, "token", "create", "--name", "exit-user").stdout.strip()
    proc = cli(env, "token", "create", "--name", "other", "--token", user)
    assert proc.returncode == 5
    assert proc.stderr.startswith("error (403): this needs the admin role")


def test_other_errors_exit_1_and_usage_errors_2(env: dict[str, str]) -> None:
    code, body = json_error(env, "alloc", "--cpu", "-1")
    assert (code, body["status"]) == (1, 422)
    assert body["message"].startswith("resources.cpu: ")
    code, body = json_error(env, "submit", "--bogus")
    assert (code, body) == (2, {"error": "usage", "status": None, "message":
                                "No such option: --bogus (Possible options: --gpu)"})
    proc = cli(env, "alloc")
    assert proc.returncode == 2 and "ask for something" in proc.stderr
    # A command checked locally answers in the same shape.
    trace = Path(__file__).parent / "no-such-trace.swf"
    code, body = json_error(env, "simulate", str(trace))
    assert (code, body["error"], body["status"]) == (2, "usage", None)


def test_a_closed_port_exits_6_naming_the_url(env: dict[str, str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    proc = cli(env, "nodes", "list", "--server", url)
    assert proc.returncode == 6 and proc.stdout == ""
    assert proc.stderr.startswith(f"error: cannot reach the server at {url} (")
    assert "Traceback" not in proc.stderr
    code, body = json_error(env, "jobs", "list", "--server", url)
    assert code == 6
    assert (body["error"], body["status"], body["url"]) == ("unreachable", None, url)
    assert body["message"].startswith(f"cannot reach the server at {url} (")
    # Following events from a server never reached is the same error, not a
    # silent wait for it (a dropped stream, once answered, is resumed).
    proc = cli(env, "events", "-f", "--server", url)
    assert proc.returncode == 6
    assert proc.stderr.startswith(f"error: cannot reach the server at {url} (")


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize("as_json", [False, True])
def test_a_timeout_exits_6_without_a_traceback(
    silent_server: str, as_json: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    with (pytest.raises(typer.Exit) as exited, api_errors(as_json),
          Client(silent_server, None, timeout=0.3) as c):
        c.list_nodes()
    assert exited.value.exit_code == 6
    out, err = capsys.readouterr()
    if as_json:
        assert err == ""
        body = json.loads(out)
        assert (body["error"], body["status"], body["url"]) == ("timeout", None, silent_server)
    else:
        assert out == ""
        assert err.startswith(f"error: no answer from the server at {silent_server} in time")
        assert "Traceback" not in err


def test_the_readme_lists_every_exit_code() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    for code in range(7):
        assert f"| {code} |" in section, code
