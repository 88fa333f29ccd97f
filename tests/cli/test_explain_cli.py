"""``apportion jobs explain JOB --nodes`` as a real subprocess against a real
server: the per-node table with its literal reasons, and ``--json``."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.test_cli import clean_env, rows, run, run_json, write_config
from server.helpers import add_node, until
from support import ServerProcess


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, str], str]]:
    """A server with three nodes (too small, busy, cordoned) and one job that waits."""
    data = tmp_path_factory.mktemp("explain-cli")
    proc = ServerProcess(data).start()
    try:
        with proc.client() as api:
            add_node(api, {"name": "small", "resources": {"cpu": "2", "memory": "4Gi"}})
            add_node(api, {"name": "busy", "resources": {"cpu": "8", "memory": "64Gi"}})
            add_node(api, {"name": "off", "resources": {"cpu": "1", "memory": "64Gi"}})
            assert api.post("/api/v1/nodes/off/cordon").status_code == 200
            hog = api.post("/api/v1/jobs", json={"resources": {"cpu": "6"}}).json()
            until(lambda: api.get(f"/api/v1/jobs/{hog['id']}").json()["state"] == "running")
            job = api.post("/api/v1/jobs", json={"resources": {"cpu": "4", "memory": "8Gi"}})
            assert job.status_code == 201, job.text
        config = Path(data) / "cli.toml"
        yield clean_env(write_config(config, proc.url, proc.token), COLUMNS="200"), \
            job.json()["id"]
    finally:
        proc.stop()


def test_explain_nodes_prints_a_table_of_reasons(setup: tuple[dict[str, str], str]) -> None:
    env, job_id = setup
    out = run(env, "jobs", "explain", job_id, "--nodes").stdout
    assert "3 of 3 node(s)" in out
    assert re.search(r"node\s+┃\s+now\s+┃\s+ever\s+┃\s+reason", out)
    assert rows(out) == [
        ["busy", "busy", "yes", "insufficient cpu: 2 free, 4 requested"],
        ["off", "condition", "no", "node is cordoned; never: cpu: node capacity 1 < 4 requested"],
        ["small", "never", "no", "cpu: node capacity 2 < 4 requested"],
    ]
    plain = run(env, "jobs", "explain", job_id).stdout
    assert "never:" not in plain and "3 of 3" not in plain


def test_explain_nodes_json_keeps_the_api_body(setup: tuple[dict[str, str], str]) -> None:
    env, job_id = setup
    body = run_json(env, "jobs", "explain", job_id, "--nodes")
    assert [(n["node"], n["now"], n["ever"]) for n in body["nodes"]] == [
        ("busy", "busy", True), ("off", "condition", False), ("small", "never", False)]
    assert (body["nodes_shown"], body["nodes_more"]) == (3, 0)


def test_past_the_limit_the_table_counts_the_rest(capsys: pytest.CaptureFixture[str]) -> None:
    from apportion.cli.jobs_cmds import _node_table

    shown = [{"node": f"s{i:02}", "now": "never", "ever": False,
              "reason": "cpu: node capacity 1 < 4 requested",
              "never": "cpu: node capacity 1 < 4 requested"} for i in range(50)]
    _node_table({"nodes": shown, "nodes_total": 55, "nodes_shown": 50, "nodes_more": 5,
                 "nodes_more_counts": {"capacity cpu": 4, "not_ready": 1}})
    out = capsys.readouterr().out
    assert "50 of 55 node(s)" in out
    assert len(rows(out)) == 50
    assert "  and 5 more node(s): 4 capacity cpu, 1 not_ready" in out
