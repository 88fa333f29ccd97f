"""`jobs logs JOB --attempt N` and the API's ``attempt``: the output of one
attempt of a task that was retried, through a real agent, on SQLite and on
PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from e2e.cluster import Cluster

pytestmark = pytest.mark.slow


def test_logs_of_each_attempt_by_api_and_cli(backend_cluster: Cluster, tmp_path: Path) -> None:
    cluster = backend_cluster
    cluster.add_agent("node-a", "cpu=2,memory=4Gi")
    job = cluster.submit(
        ["sh", "-c", "echo attempt $APPORTION_ATTEMPT; exit 3"],
        restart={"policy": "on-failure", "max_retries": 2, "backoff": 0.1},
    )
    [ended] = cluster.wait_jobs([job["id"]], timeout=60).values()
    assert ended["state"] == "failed"
    logs = f"/api/v1/jobs/{job['id']}/logs"
    with cluster.api as c:
        for attempt in (1, 2, 3):
            page = c.get(logs, params={"attempt": attempt}).json()
            assert (page["attempt"], page["data"]) == (attempt, f"attempt {attempt}\n")
        # Without it, the latest; by index and attempt together, that one.
        assert c.get(logs).json()["data"] == "attempt 3\n"
        assert c.get(logs, params={"task": "0", "attempt": 2}).json()["data"] == "attempt 2\n"
        r = c.get(logs, params={"attempt": 9})
        assert r.status_code == 404
        assert (r.json()["message"], r.json()["field"]) == (
            "attempt: task 0 of this job has no attempt 9 (its attempts: 1, 2, 3)",
            "attempt",
        )
        assert c.get(logs, params={"attempt": 0}).status_code == 422

    assert cluster.server is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPORTION_")}
    env.update(
        APPORTION_SERVER=cluster.server.url,
        APPORTION_TOKEN=cluster.server.token,
        APPORTION_CONFIG=str(tmp_path / "none.toml"),
    )
    cli = [sys.executable, "-m", "apportion.cli.main", "jobs", "logs", job["id"]]

    def logs_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cli, *args], env=env, capture_output=True, text=True, timeout=60)

    assert logs_cli("--attempt", "2").stdout == "attempt 2\n"
    # --follow on an attempt that ended returns at once with its output.
    assert logs_cli("--attempt", "1", "--follow").stdout == "attempt 1\n"
    assert logs_cli().stdout == "attempt 3\n"
    proc = logs_cli("--attempt", "7")
    assert (proc.returncode, proc.stderr) == (
        3,
        "error (404): attempt: task 0 of this job has no attempt 7 (its attempts: 1, 2, 3)\n",
    )
    proc = logs_cli("--attempt", "0")
    assert proc.returncode == 2 and "--attempt" in proc.stderr
