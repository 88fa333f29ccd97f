"""/api/v1/scaling and ``apportion scale`` against real server processes:
one with no node pools, one with an ``advice`` pool (a local provider whose
settings hold credentials). Advice is answered with its reasons and never
acted on; only an admin may run a round; credentials show as ``***``."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.helpers import config_env, make_token, until
from support import ServerProcess

NO_POOLS = {"pools": [], "message": "no node pools are configured"}
ENV_SECRET = "env-secret-7f3a9c"
LITERAL_KEY = "literal-api-key-123"
POOL_PASSWORD = "pool-password-456"

ADVICE_CONFIG = """
[scaling]
interval_s = 0.3

[providers.lab]
kind = "local"
state_dir = {state_dir}
api_key = "{literal_key}"
env = {{ AGENT_SECRET = "${{SCALING_TEST_SECRET}}" }}
# Were anything ever started, it would exit at once: nothing to leak.
command = ["{{python}}", "-c", "raise SystemExit(3)"]

[[providers.lab.node_types]]
name = "c4"
resources = {{ cpu = "4", memory = "8Gi" }}
price_per_hour = 0.5

[[pools]]
name = "lab"
provider = "lab"
node_type = "c4"
min_size = 0
max_size = 4
mode = "advice"
settings = {{ password = "{pool_password}" }}
"""


def _events(server: ServerProcess, kind: str) -> list[dict[str, Any]]:
    with contextlib.closing(sqlite3.connect(server.data_dir / "apportion.db", timeout=10)) as db:
        rows = db.execute("SELECT subject, data FROM events WHERE kind = ? ORDER BY id",
                          (kind,)).fetchall()
    return [{"subject": s, "data": json.loads(d)} for s, d in rows]


def _cli(tmp: Path, server: ServerProcess, token: str, *args: str,
         ok: bool = True) -> subprocess.CompletedProcess[str]:
    """``apportion ...`` as a subprocess, told the server and token by flag,
    with no apportion setting from this environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPORTION_")}
    env["APPORTION_CONFIG"] = str(tmp / "no-cli-config.toml")
    env["COLUMNS"] = "400"  # one table row per line
    proc = subprocess.run(
        [sys.executable, "-m", "apportion.cli.main", *args, "--server", server.url,
         "--token", token],
        env=env, capture_output=True, text=True, timeout=60,
    )
    if ok:
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    return proc


@pytest.fixture(scope="module")
def bare(shared: ServerProcess) -> ServerProcess:
    """A server with no node pools configured: the module's own (``conftest.py``)."""
    return shared


@pytest.fixture(scope="module")
def advice(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    """A server with one advice pool, one static node and three jobs that
    want a whole node each: one fits the static node, two wait."""
    data = tmp_path_factory.mktemp("advice")
    state_dir = data / "lab-nodes"
    config = config_env(data, ADVICE_CONFIG.format(
        state_dir=json.dumps(str(state_dir)), literal_key=LITERAL_KEY,
        pool_password=POOL_PASSWORD))
    proc = ServerProcess(data, extra_env={**config, "SCALING_TEST_SECRET": ENV_SECRET})
    try:
        proc.start()
        with proc.client() as api:
            # Registered as an agent would (the admin may): a node whose agent
            # runs jobs with a command, which one of the three then takes.
            r = api.post("/api/v1/agents/register", json={
                "node": {"name": "static-1", "resources": {"cpu": "2", "memory": "4Gi"}},
                "agent": {"id": "static-agent", "heartbeat_s": 3600,
                          "stop_after_disconnect_s": 7200}})
            assert r.status_code == 200, r.text
            for i in range(3):
                r = api.post("/api/v1/jobs", json={
                    "name": f"whole-{i}", "command": ["true"],
                    "resources": {"cpu": "2", "memory": "1Gi"}})
                assert r.status_code == 201, r.text
        yield proc, state_dir
    finally:
        proc.stop()


# -- no pools ------------------------------------------------------------------------


def test_without_pools_every_endpoint_says_so(bare: ServerProcess) -> None:
    with bare.client() as api:
        assert api.get("/api/v1/scaling/evaluation").json() == NO_POOLS
        assert api.get("/api/v1/scaling/pools").json() == NO_POOLS
        r = api.post("/api/v1/scaling/evaluate")
        assert (r.status_code, r.json()) == (200, NO_POOLS)
        # With nothing that could ever hold it, a job is still refused.
        r = api.post("/api/v1/jobs", json={"command": ["true"], "resources": {"cpu": "1"}})
        assert r.status_code == 422 and "there are no nodes" in r.json()["message"], r.text
    user = make_token(bare, "bare-user", "user")
    with bare.client(user) as api:
        assert api.get("/api/v1/scaling/evaluation").json() == NO_POOLS
        r = api.post("/api/v1/scaling/evaluate")
        assert r.status_code == 403, r.text


def test_scale_plan_without_pools(bare: ServerProcess, tmp_path: Path) -> None:
    out = _cli(tmp_path, bare, bare.token, "scale", "plan")
    assert "no node pools are configured" in out.stdout
    assert json.loads(_cli(tmp_path, bare, bare.token, "scale", "plan", "--json").stdout) \
        == NO_POOLS


# -- an advice pool -------------------------------------------------------------------


def _lab(answer: dict[str, Any]) -> dict[str, Any]:
    [pool] = answer["pools"]
    assert pool["pool"] == "lab", pool
    return pool  # type: ignore[no-any-return]


def test_advice_pool_answers_a_decision_with_reasons(
    advice: tuple[ServerProcess, Path]
) -> None:
    server, _ = advice
    with server.client() as api:
        r = api.get("/api/v1/scaling/evaluation")
    assert r.status_code == 200, r.text
    lab = _lab(r.json())
    assert (lab["decision"], lab["count"], lab["template"]) == ("scale_up", 1, "c4"), lab
    assert (lab["mode"], lab["advice_only"]) == ("advice", True)
    assert (lab["provider"], lab["provider_kind"]) == ("lab", "local")
    assert lab["reason"].startswith("add 1 c4 node(s) (cpu="), lab["reason"]
    assert "{'" not in lab["reason"]  # no Python dict repr in a message
    assert "2 pending task(s) fit on no node; they pack onto 1 c4 node(s)" in lab["reason"]
    assert lab["pending_tasks"] == 2
    assert (lab["size"], lab["joining"], lab["min_size"], lab["max_size"]) == (0, [], 0, 4)
    assert lab["cost_per_hour_delta"] == pytest.approx(0.5)
    assert lab["evaluated_at"].endswith("Z")


def test_advice_is_never_acted_on(advice: tuple[ServerProcess, Path]) -> None:
    server, state_dir = advice
    with server.client() as api:
        # A few rounds of the loop (every 0.3 s), each deciding to scale up.
        until(lambda: _lab(api.get("/api/v1/scaling/pools").json())["decision_counts"]
              .get("scale_up", 0) >= 3, what="three scale-up decisions")
        r = api.post("/api/v1/scaling/evaluate")  # a round on demand, too
        assert r.status_code == 200, r.text
        lab = _lab(r.json())
        assert (lab["decision"], lab["advice_only"]) == ("scale_up", True)
        nodes = [n["name"] for n in api.get("/api/v1/nodes").json()["nodes"]]
        pool = _lab(api.get("/api/v1/scaling/pools").json())
    assert nodes == ["static-1"], "an advice pool created nodes"
    assert (pool["nodes"], pool["joining"]) == ([], [])
    assert pool["last_scale_up_at"] is None
    assert pool["decision_counts"]["scale_up"] >= 3, pool["decision_counts"]
    assert [d["decision"] for d in pool["recent_decisions"]] == ["scale_up"]
    assert not _events(server, "scaling.scale_up")
    assert not _events(server, "scaling.node_created")
    # A round before the fixture's jobs arrived may have decided "none".
    decisions = [d["data"]["decision"] for d in _events(server, "scaling.decision")]
    assert [d for d in decisions if d != "none"] == ["scale_up"], decisions
    assert decisions[-1] == "scale_up", decisions
    made = state_dir / "nodes.json"
    assert not made.exists() or json.loads(made.read_text())["nodes"] == {}


def test_a_job_larger_than_every_node_and_the_pool_node_type_is_refused(
    advice: tuple[ServerProcess, Path]
) -> None:
    # A pool stands in for nodes that do not exist yet (a job only a c4 node
    # could hold waits for it: tests/server/test_scaling_pools.py), but
    # nothing stands in for a node larger than a c4.
    server, _ = advice
    with server.client() as api:
        r = api.post("/api/v1/jobs", json={"command": ["true"], "resources": {"cpu": "5"}})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "tasks", r.text


def test_only_an_admin_may_run_a_round(advice: tuple[ServerProcess, Path]) -> None:
    server, _ = advice
    user = make_token(server, "lab-user", "user")
    agent = make_token(server, "lab-agent", "agent")
    for token in (user, agent):
        with server.client(token) as api:
            assert api.get("/api/v1/scaling/evaluation").status_code == 200
            assert api.get("/api/v1/scaling/pools").status_code == 200
            r = api.post("/api/v1/scaling/evaluate")
            assert r.status_code == 403, r.text
            assert "needs the admin role" in r.json()["message"]
    with server.client("not-a-token") as api:
        assert api.get("/api/v1/scaling/evaluation").status_code == 401
        assert api.post("/api/v1/scaling/evaluate").status_code == 401


def test_credentials_are_masked_in_pools(advice: tuple[ServerProcess, Path]) -> None:
    server, state_dir = advice
    with server.client() as api:
        r = api.get("/api/v1/scaling/pools")
    assert r.status_code == 200, r.text
    lab = _lab(r.json())
    provider = lab["provider_settings"]
    assert provider["api_key"] == "***"
    assert provider["env"] == {"AGENT_SECRET": "***"}  # it came from the environment
    assert provider["state_dir"] == str(state_dir)  # not a credential: shown
    assert lab["settings"] == {"password": "***"}
    for secret in (ENV_SECRET, LITERAL_KEY, POOL_PASSWORD):
        assert secret not in r.text
    assert r.json()["interval_s"] == pytest.approx(0.3)
    assert lab["node_type"]["resources"] == {"cpu": "4", "memory": "8Gi"}
    assert lab["labels"] == {"pool": "lab", "provider": "lab", "node-type": "c4",
                             "apportion.io/agent": "true"}


def test_scale_plan_prints_the_decision(advice: tuple[ServerProcess, Path],
                                        tmp_path: Path) -> None:
    server, _ = advice
    user = make_token(server, "plan-user", "user")
    answer = json.loads(_cli(tmp_path, server, user, "scale", "plan", "--json").stdout)
    lab = _lab(answer)
    assert (lab["decision"], lab["count"], lab["advice_only"]) == ("scale_up", 1, True)

    text = _cli(tmp_path, server, user, "scale", "plan").stdout
    [row] = [line for line in text.splitlines() if "│ lab " in line]
    cells = [c.strip() for c in row.strip().strip("│").split("│")]
    assert cells[:9] == ["lab", "lab (local)", "advice", "0 [0–4]", "0", "0", "0%",
                         "2", "scale_up +1 × c4"], cells
    assert cells[9].startswith("add 1 c4 node(s)") and "pending task(s)" in cells[9]

    pools = _cli(tmp_path, server, user, "scale", "pools", "--json").stdout
    for secret in (ENV_SECRET, LITERAL_KEY, POOL_PASSWORD):
        assert secret not in pools
    denied = _cli(tmp_path, server, user, "scale", "evaluate", ok=False)
    assert denied.returncode == 5 and "needs the admin role" in denied.stderr, denied


def test_new_nodes_are_told_the_port_the_server_listens_on() -> None:
    # Without APPORTION_SERVER_URL or scaling.server_url, a pool's nodes are
    # pointed at the address `apportion server` serves (the end-to-end test
    # relies on it), not at a fixed :8080.
    from apportion.cli.server_cmds import _own_url

    assert _own_url("127.0.0.1", 9123) == "http://127.0.0.1:9123"
    assert _own_url("0.0.0.0", 80) == "http://127.0.0.1:80"
    assert _own_url("::", 8443) == "http://[::1]:8443"
    assert _own_url("10.0.0.5", 8080) == "http://10.0.0.5:8080"
