"""What the client path of the CLI imports: a short command must not pay
for the scheduler, the simulator, numpy, the server stack, httpx, pydantic,
rich or the other commands' modules (their import time is what made
``apportion submit`` take half a second; the figure itself is in
``bench/bench_cli.py``, not tested here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from support import ServerProcess

HEAVY = ("httpx", "numpy", "sqlalchemy", "fastapi", "uvicorn", "structlog", "sortedcontainers",
         "apportion.core", "apportion.service", "apportion.server", "apportion.store",
         "apportion.agent", "apportion.traces", "matplotlib",
         # typer >= 0.29 builds a pydantic TypeAdapter per parameter (pyproject pins < 0.29).
         "pydantic", "pydantic_core", "typer._adapters", "rich", "apportion.protocol")

OTHER_COMMANDS = ("apportion.cli.nodes_cmds", "apportion.cli.ledger_cmds",
                  "apportion.cli.cluster_cmds", "apportion.cli.agent_cmds",
                  "apportion.cli.observe_cmds", "apportion.cli.planning_cmds",
                  "apportion.cli.scaling_cmds", "apportion.cli.simulate",
                  "apportion.cli.dashboard_cmds")
"""What ``submit`` does not need: a call that names a command imports its module alone."""

PROBE = """
import json, sys
sys.argv = ["apportion", *json.loads(sys.argv[1])]
from apportion.cli.main import app
try:
    app()
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)), file=sys.__stderr__)
"""


def modules_after(*args: str, env: dict[str, str] | None = None) -> set[str]:
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args)],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})
    return set(json.loads(proc.stderr.strip().splitlines()[-1]))


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


def test_submit_help_imports_nothing_heavy() -> None:
    loaded = modules_after("submit", "--help")
    assert "apportion.cli.jobs_cmds" in loaded
    assert heavy(loaded) == []
    assert loaded.isdisjoint(OTHER_COMMANDS)


def test_a_submit_to_a_live_http_server_imports_nothing_heavy(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path).start()
    try:
        with server.client() as api:
            api.post("/api/v1/nodes", json={"name": "n1", "resources": {"cpu": "4"}})
        env = {"APPORTION_SERVER": server.url, "APPORTION_TOKEN": server.token,
               "APPORTION_CONFIG": str(tmp_path / "none.toml")}
        # Printed for a person (one plain line, to a pipe here) and as JSON.
        for args in (("submit", "--cpu", "1"), ("submit", "--cpu", "1", "--json")):
            loaded = modules_after(*args, env=env)
            assert "apportion.client" in loaded
            assert heavy(loaded) == [], args
            # Host names reach getaddrinfo as bytes: no IDNA codec.
            assert "encodings.idna" not in loaded and "unicodedata" not in loaded, args
            assert loaded.isdisjoint(OTHER_COMMANDS), args
    finally:
        server.stop()


def test_a_submit_call_imports_no_table_and_nothing_heavy() -> None:
    # Port 9 on loopback refuses: the call goes as far as the request.
    loaded = modules_after("submit", "--cpu", "1", "--json", "--server", "http://127.0.0.1:9")
    assert "apportion.client" in loaded
    assert heavy(loaded) == []
    assert "rich.table" not in loaded
    assert "rich.progress" not in loaded
    # Its error is JSON on stdout: nothing is drawn, so Rich is not loaded.
    assert not {m for m in loaded if m == "rich" or m.startswith("rich.")}


def test_help_does_not_load_rich() -> None:
    # Click's plain help formatter draws --help (see cli/main.py).
    for args in (("--help",), ("submit", "--help"), ("nodes", "list", "--help")):
        assert not {m for m in modules_after(*args) if m == "rich" or m.startswith("rich.")}


def test_simulate_help_does_not_load_the_simulator() -> None:
    loaded = modules_after("simulate", "--help")
    assert heavy(loaded) == []
