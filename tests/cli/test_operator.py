"""The first hour of an operator, through the real CLI and a real server:
`apportion up` on a busy port changes nothing, the token is easy to get and
the README's curl example works as written after `up`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

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
    finally:
        up.terminate()
        try:
            up.wait(15)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait(5)
