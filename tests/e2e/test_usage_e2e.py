"""Learned requests end to end: a real agent measures what a task used and
reports it with the exit; the server records it and predicts from it."""

from __future__ import annotations

import math

import pytest

from e2e.cluster import Cluster, payload

pytestmark = pytest.mark.slow


def test_finished_tasks_record_usage_and_feed_the_predictor(cluster: Cluster) -> None:
    cluster.add_agent("node-a", "cpu=2,memory=4Gi")
    ids = [cluster.submit(payload("hog", 100, 1.5), name="hog-train",
                          resources={"cpu": "1", "memory": "512Mi"})["id"] for _ in range(2)]
    ended = cluster.wait_jobs(ids, timeout=60)
    assert {j["state"] for j in ended.values()} == {"succeeded"}

    with cluster.api as c:
        r = c.get("/api/v1/predictions/hog-train")
    assert r.status_code == 200, r.text
    p = r.json()
    assert p["records"]["matching"] == 2
    # Two runs: too few for statistics, and no request given: the most they
    # used plus the margin (not the default hour and gigabyte)...
    assert p["detail"]["memory"]["tier"] == "few_runs"
    assert p["detail"]["memory"]["samples"] == 2
    # ... and what the runs really used is measured: 100 MiB held, 1.5 s run.
    used_memory = p["detail"]["memory"]["max_used_before"]
    assert 100 * 2**20 <= used_memory < 512 * 2**20
    assert 1 <= p["detail"]["runtime_s"]["max_used_before"] <= 10
    assert p["detail"]["cpu_seconds"]["max_used_before"] >= 1  # ceil of the CPU time used

    assert p["detail"]["memory"]["value"] == math.ceil(used_memory * 1.1)
    assert p["detail"]["runtime_s"]["value"] == math.ceil(
        p["detail"]["runtime_s"]["max_used_before"] * 1.1)

    # Submitting with "auto" memory fills it in from those two runs, above
    # what the job used before.
    job = cluster.submit(payload("hog", 10, 0.1), name="hog-train",
                         resources={"cpu": "1", "memory": "auto"})
    spec = job["spec"]
    assert spec["resources"]["cpu"] == "1"
    assert spec["resources"]["memory"] == p["detail"]["memory"]["display"]
    assert spec["prediction"]["filled"]["memory"] == p["detail"]["memory"]["display"]
    assert spec["prediction"]["tier"] == "few_runs"
    cluster.wait_jobs([job["id"]], timeout=60)
