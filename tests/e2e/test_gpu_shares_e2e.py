"""GPU shares and MIG end to end: a real server, real agents (declared GPUs,
or the fake NVML), jobs submitted through the API and the CLI, and what the
tasks saw in their environment, read back from their logs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from agent.fake_nvml import MIG_UUIDS
from e2e.cluster import Cluster, fake_nvml_env

SMALL = {"cpu": "100m", "memory": "64Mi"}


def cli(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    assert cluster.server is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPORTION_")}
    env.update(APPORTION_SERVER=cluster.server.url, APPORTION_TOKEN=cluster.server.token)
    return subprocess.run(
        [sys.executable, "-m", "apportion.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def log_of(cluster: Cluster, job_id: str) -> str:
    with cluster.api as c:
        return str(c.get(f"/api/v1/jobs/{job_id}/logs").json()["data"])


def cuda_lines(cluster: Cluster, job_id: str) -> list[str]:
    return sorted(line for line in log_of(cluster, job_id).splitlines() if line.startswith("CUDA_"))


def devices_of(cluster: Cluster, job_id: str) -> dict[str, Any]:
    [task] = cluster.job(job_id)["tasks"]
    return cluster.allocation(task["allocation_id"])["devices"]  # type: ignore[no-any-return]


def test_quarter_gpu_jobs_share_one_gpu_and_a_whole_gpu_job_takes_another(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.add_agent(
        "box", "cpu=4,memory=8Gi,gpu=2", extra=["--gpu-shares", "4", "--shared-gpus", "1"]
    )
    node = cluster.wait_node("box", "ready")
    assert (node["resources"]["gpu"], node["resources"]["gpu.shares"]) == ("1", "4")
    assert node["labels"]["gpu.shares"] == "4"
    go = tmp_path / "go"
    # Each share task prints what it was given, then holds its share until
    # the test says go, so that both hold one at the same time.
    hold = ["sh", "-c", f"env; while [ ! -e {go} ]; do sleep 0.05; done"]
    by_api = cluster.submit(hold, resources={**SMALL, "gpu": 0.25})
    assert by_api["spec"]["resources"] == {**SMALL, "gpu.shares": 1}
    assert by_api["spec"]["gpu_share"] == {"asked": "0.25", "shares": 1, "split": 4, "percent": 25}
    proc = cli(
        cluster,
        "submit",
        "--cpu",
        "100m",
        "--memory",
        "64Mi",
        "--gpu",
        "0.25",
        "--json",
        "--",
        *hold,
    )
    assert proc.returncode == 0, proc.stderr
    by_cli = json.loads(proc.stdout)
    cluster.wait_jobs([by_api["id"], by_cli["id"]], states=("running",))
    slots = [devices_of(cluster, j)["gpu.shares"] for j in (by_api["id"], by_cli["id"])]
    assert sorted(slots) == [["1/0"], ["1/1"]]

    whole = cluster.submit(["env"], resources={**SMALL, "gpu": 1})
    assert cluster.wait_jobs([whole["id"]])[whole["id"]]["state"] == "succeeded"
    assert devices_of(cluster, whole["id"]) == {"gpu": ["0"]}
    assert cuda_lines(cluster, whole["id"]) == ["CUDA_VISIBLE_DEVICES=0"]

    go.touch()
    done = cluster.wait_jobs([by_api["id"], by_cli["id"]])
    assert {j["state"] for j in done.values()} == {"succeeded"}
    for job_id in (by_api["id"], by_cli["id"]):
        assert cuda_lines(cluster, job_id) == [
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=25",
            "CUDA_VISIBLE_DEVICES=1",
        ]


def test_bad_share_requests_name_the_field_and_the_limit(cluster: Cluster) -> None:
    with cluster.api as c:
        none = c.post("/api/v1/jobs", json={"resources": {"gpu": "0.5"}, "command": ["true"]})
    assert none.status_code == 422
    assert "no node offers GPU shares; start an agent with --gpu-shares N" in none.text
    cluster.add_agent("box", "cpu=4,memory=8Gi,gpu=1", extra=["--gpu-shares", "4"])
    with cluster.api as c:
        odd = c.post("/api/v1/jobs", json={"resources": {"gpu": 0.3}, "command": ["true"]})
    assert odd.status_code == 422
    assert odd.json()["field"] == "resources.gpu"
    assert "resources.gpu: 0.3 is not a multiple of 1/4" in odd.json()["message"]
    proc = cli(cluster, "submit", "--gpu", "1.5", "--", "true")
    assert proc.returncode != 0
    assert "resources.gpu: '1.5' GPUs is more than one GPU and not whole" in proc.stderr


def test_mig_instances_are_devices_a_job_selects_by_profile(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.add_agent("a100", "cpu=4,memory=8Gi", env=fake_nvml_env(tmp_path / "nvml", "a100_mig"))
    node = cluster.wait_node("a100", "ready")
    assert node["resources"]["gpu"] == "2"
    assert [d["id"] for d in node["devices"]["gpu"]] == ["0-mig0", "0-mig2"]
    job = cluster.submit(["env"], resources={**SMALL, "gpu": 1}, constraints=["gpu.mig=3g.20gb"])
    assert cluster.wait_jobs([job["id"]])[job["id"]]["state"] == "succeeded"
    assert devices_of(cluster, job["id"]) == {"gpu": ["0-mig2"]}
    assert cuda_lines(cluster, job["id"]) == [f"CUDA_VISIBLE_DEVICES={MIG_UUIDS[1]}"]
