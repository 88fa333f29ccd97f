"""Issue 17 on real agent processes: the agent's token is in neither its
command line nor its environment and no task can read it; a task cannot
reach another's files; a hostile tar a task leaves behind is never what the
next attempt resumes from; the node says what it enforces."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from e2e.cluster import AgentProcess, Cluster, payload, wait_for

ROOT = os.geteuid() == 0 and shutil.which("setpriv") is not None
needs_root = pytest.mark.skipif(not ROOT, reason="task uids need root and setpriv")


@pytest.fixture
def sandboxes() -> Iterator[Path]:
    """A sandbox directory task uids can reach (pytest's tmp is 0700)."""
    root = Path(tempfile.mkdtemp(prefix="apportion-sandboxes-", dir="/tmp"))
    root.chmod(0o711)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _proc(pid: int, name: str) -> bytes:
    return Path(f"/proc/{pid}/{name}").read_bytes()


def _fence_pid(agent: AgentProcess) -> int:
    return int((agent.work_dir / "fence.pid").read_text().split()[0])


def test_the_agents_token_is_in_neither_its_command_line_nor_its_environment(
    cluster: Cluster
) -> None:
    by_env = cluster.add_agent("node-env", "cpu=1,memory=1Gi")
    by_file = cluster.add_agent("node-file", "cpu=1,memory=1Gi", token_file=True)
    for agent in (by_env, by_file):
        assert agent.proc is not None
        for pid in (agent.proc.pid, _fence_pid(agent)):
            for name in ("cmdline", "environ"):
                shown = _proc(pid, name)
                assert agent.token.encode() not in shown, (agent.name, pid, name)
                assert b"APPORTION_TOKEN" not in shown, (agent.name, pid, name)
    assert b"--token-file" in _proc(by_file.proc.pid, "cmdline")  # type: ignore[union-attr]


def test_a_token_on_the_command_line_is_refused_naming_the_alternative(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPORTION_")}
    env["APPORTION_CONFIG"] = str(tmp_path / "none.toml")
    done = subprocess.run(
        [sys.executable, "-m", "apportion.cli.main", "agent", "--server", "http://127.0.0.1:9",
         "--token", "apt_secret", "--work-dir", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    message = " ".join(done.stderr.replace("│", " ").split())
    assert "a token on the command line is readable by every local user" in message
    assert "--token-file PATH" in message
    loose = tmp_path / "loose.token"
    loose.write_text("apt_secret")
    loose.chmod(0o644)
    done = subprocess.run(
        [sys.executable, "-m", "apportion.cli.main", "agent", "--server", "http://127.0.0.1:9",
         "--token-file", str(loose), "--work-dir", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "lets others read it; chmod 600" in " ".join(done.stderr.replace("│", " ").split())


PROBE = r"""
try() { name=$1; shift; if "$@" >/dev/null 2>&1; then echo "$name=yes"; else echo "$name=no"; fi; }
echo "uid=$(id -u)"
try agent_environ grep -q APPORTION "/proc/$AGENT/environ"
try agent_memory head -c1 "/proc/$AGENT/mem"
try token_file cat "$TOKEN_FILE"
try work_dir ls "$WORK"
try records ls "$WORK/tasks"
try sandboxes ls "$SANDBOXES"
grep -c "$TOKEN" "/proc/$AGENT/cmdline" || true
"""


@needs_root
def test_a_task_cannot_read_the_agents_token_or_reach_its_records(
    cluster: Cluster, sandboxes: Path
) -> None:
    agent = cluster.add_agent("node-a", "cpu=2,memory=2Gi", task_user=None, token_file=True,
                              extra=["--task-uids", "61900-61919",
                                     "--sandbox-dir", str(sandboxes)])
    assert agent.proc is not None
    env = {"AGENT": str(agent.proc.pid), "TOKEN": agent.token, "WORK": str(agent.work_dir),
           "TOKEN_FILE": str(agent.work_dir.parent / "node-a.token"),
           "SANDBOXES": str(sandboxes)}
    job = cluster.submit(["env", *(f"{k}={v}" for k, v in env.items()), "sh", "-c", PROBE])
    [ended] = cluster.wait_jobs([job["id"]], timeout=60).values()
    assert ended["state"] == "succeeded", ended
    with cluster.api as c:
        out = c.get(f"/api/v1/jobs/{job['id']}/logs").json()["data"]
    assert out.splitlines() == ["uid=61900", "agent_environ=no", "agent_memory=no",
                                "token_file=no", "work_dir=no", "records=no", "sandboxes=no",
                                "0"]
    specs = _node(cluster, "node-a")["specs"]
    assert specs["isolation"] == {"mode": "per_task_uid", "task_uids": "61900-61919",
                                  "reason": "each task runs under its own uid from 61900-61919"}
    assert specs["gpu_isolation"]["mode"] in ("cgroup_devices", "mount_namespace")


def _node(cluster: Cluster, name: str) -> dict[str, Any]:
    with cluster.api as c:
        return c.get(f"/api/v1/nodes/{name}").json()  # type: ignore[no-any-return]


@needs_root
def test_a_hostile_tar_a_task_leaves_is_never_what_the_next_attempt_resumes_from(
    cluster: Cluster, sandboxes: Path, tmp_path: Path
) -> None:
    """Issue 17 finding 2 as the review found it: a job wrote a CVE-2025-4517
    tar as ``checkpoint.tar`` and failed with ``restart: on-failure``; the
    next attempt's agent created a file above its ``resume/`` directory.
    Here the agent packs the checkpoint directory itself: the honest file
    comes back, the link is left out, the tar never leaves the task."""
    cluster.add_agent("node-a", "cpu=2,memory=2Gi", task_user=None,
                      extra=["--task-uids", "61920-61939", "--sandbox-dir", str(sandboxes)])
    job = cluster.submit(payload("slip"), restart={"policy": "on-failure", "max_retries": 1,
                                                    "backoff": 0.1})
    [ended] = cluster.wait_jobs([job["id"]], timeout=60).values()
    assert ended["state"] == "succeeded", ended
    with cluster.api as c:
        out = c.get(f"/api/v1/jobs/{job['id']}/logs").json()["data"]
    assert out.splitlines() == ["resumed: counter", "counter: 5"]
    for root in (sandboxes, tmp_path):  # two levels above resume/ is the sandbox root
        assert not list(root.glob("**/outside.txt")), root
    assert not (sandboxes.parent / "outside.txt").exists()
    attempts = sorted(cluster.job(job["id"])["tasks"], key=lambda t: t["attempt"])
    assert [t["state"] for t in attempts] == ["failed", "succeeded"]


def test_an_unprivileged_or_root_task_user_says_what_it_cannot_enforce(
    cluster: Cluster
) -> None:
    cluster.add_agent("node-a", "cpu=1,memory=1Gi")
    specs = _node(cluster, "node-a")["specs"]
    if os.geteuid() == 0:
        assert specs["isolation"] == {
            "mode": "shared_uid", "reason": "tasks run as root (--task-user root): nothing on "
            "the node separates a task from the agent or from other tasks"}
    else:
        assert specs["isolation"]["mode"] == "shared_uid"
    assert specs["gpu_isolation"]["mode"] in ("cgroup_devices", "mount_namespace", "env_only")
    assert wait_for("the agent's fence", lambda: psutil.pid_exists(
        _fence_pid(cluster.agents["node-a"])), 10)
