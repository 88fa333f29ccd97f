"""Jobs end to end (issue 13): 2,000 jobs running ``true``, submitted over HTTP
at concurrency 8 to a real ``apportion server`` (SQLite) with one real agent
declaring ``cpu=32``, until every job has succeeded. Goal: ≥ 300 jobs/s.

Prints the same figures as the issue (accept time, completion time, jobs/s,
submit latency) and where the time goes between a submission and its
reported exit, from the stored events' timestamps (medians over the jobs):

- scheduled: submitted -> placed (the cycle, the grant and task commit)
- delivered+spawned: placed -> the agent says ``running`` (the long-poll
  wakes, the agent starts the process, its report commits)
- ran+reported: ``running`` -> the exit recorded (the process, the exit
  report, the release)

    .venv/bin/python bench/bench_e2e.py [--jobs 2000] [--concurrency 8] [--array]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from common import write_result
from loadgen import build_request, run_load

from e2e.cluster import Cluster, wait_for

GOAL = 300.0


def _breakdown(db: Path) -> dict[str, float]:
    """Median milliseconds of each leg, from the events of every job."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT kind, subject, data, at FROM events WHERE kind IN "
                            "('job.submitted', 'job.placed', 'task.state')").fetchall()
    submitted: dict[str, float] = {}
    placed: dict[str, float] = {}
    running: dict[str, float] = {}
    ended: dict[str, float] = {}
    spawned: dict[str, float] = {}
    for kind, subject, data, at in rows:
        if kind == "job.submitted":
            submitted[subject] = at
        elif kind == "job.placed":
            placed.setdefault(subject, at)
        else:
            body = json.loads(data)
            job = body.get("job")
            if body.get("state") == "running":
                running.setdefault(job, at)
            elif body.get("state") in ("succeeded", "failed"):
                ended[job] = at
                # A task that ends before its "running" report went out is
                # reported once, by its exit: its start is the agent's own time.
                started = (body.get("times") or {}).get("started_at")
                if started is not None:
                    spawned.setdefault(job, started)
    for job, at in spawned.items():
        running.setdefault(job, at)
    legs = {"scheduled": (submitted, placed), "delivered+spawned": (placed, running),
            "ran+reported": (running, ended)}
    out = {}
    for name, (a, b) in legs.items():
        spans = [(b[j] - a[j]) * 1000 for j in a if j in b]
        out[name + "_ms"] = round(statistics.median(spans), 1) if spans else float("nan")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--array", action="store_true",
                        help="one job array of --jobs tasks instead of --jobs jobs")
    parser.add_argument("--keep", type=Path, help="copy the server's database here after")
    args = parser.parse_args()
    args.server_env = {"APPORTION_ACCESS_LOG": "1"} if args.keep else {}
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        cluster = Cluster(Path(tmp), server_env=dict(args.server_env)).start()
        try:
            assert cluster.server is not None
            # The tests' 2 s fence stops tasks whenever a loaded host keeps
            # the agent from hearing the server for a second (both sides of
            # a before/after pair failed so at load 10): a throughput run
            # measures nothing then, so it gets a production-like fence.
            cluster.add_agent("node-a", resources="cpu=32,memory=64Gi", heartbeat=5.0,
                              log_interval=1.0, watchdog=1.0, stop_after_disconnect=60.0)
            url, token = cluster.server.url, cluster.server.token
            body: dict[str, Any] = {"command": ["true"], "resources": {"cpu": "1"}}
            if args.array:
                body["array"] = args.jobs
            request = build_request(url, "/api/v1/jobs", token, body)
            meters = _cpu_meters(cluster)
            started = time.perf_counter()
            load = asyncio.run(run_load(url, request, concurrency=args.concurrency,
                                        total=1 if args.array else args.jobs,
                                        max_seconds=600))
            accepted = time.perf_counter() - started
            assert load.statuses == {201: 1 if args.array else args.jobs}, load.statuses

            wait_for(f"{args.jobs} succeeded", lambda: _all_succeeded(cluster, args.jobs),
                     900, every=0.25)
            finished = time.perf_counter() - started
            cpu = {name: meter() for name, meter in meters.items()}
            legs = _breakdown(cluster.server.data_dir / "apportion.db")
            if args.keep:
                import shutil

                shutil.copytree(Path(tmp), args.keep, dirs_exist_ok=True)
        finally:
            cluster.close()
    rate = args.jobs / finished
    print(f"{args.jobs} {'array tasks' if args.array else 'jobs'} running `true`, "
          f"c={args.concurrency}, one agent cpu=32")
    print(f"  accepted in {accepted:.2f} s; all succeeded after {finished:.2f} s")
    print(f"  {rate:.1f} jobs/s (goal >= {GOAL:.0f}); submit latency p50 "
          f"{load.percentile(50) * 1000:.1f} ms, p99 {load.percentile(99) * 1000:.1f} ms")
    print("  where a job's time goes (medians): " + ", ".join(
        f"{k[:-3]} {v:.1f} ms" for k, v in legs.items()))
    per_job = {k: round(v / args.jobs * 1000, 3) for k, v in cpu.items()}
    print("  CPU per job: " + ", ".join(f"{k} {v:.2f} ms" for k, v in per_job.items())
          + f" (the machine's {psutil.cpu_count()} cores: "
          f"{finished * psutil.cpu_count() / args.jobs * 1000:.2f} ms of CPU per job)")
    write_result("e2e_array" if args.array else "e2e", {
        "jobs": args.jobs, "concurrency": args.concurrency, "array": args.array,
        "accepted_s": round(accepted, 3), "finished_s": round(finished, 3),
        "jobs_per_s": round(rate, 1), "goal_jobs_per_s": GOAL,
        "submit_p50_ms": round(load.percentile(50) * 1000, 2),
        "submit_p99_ms": round(load.percentile(99) * 1000, 2), **legs,
        "cpu_ms_per_job": per_job})
    return 0


def _cpu_meters(cluster: Cluster) -> dict[str, Any]:
    """Functions that return the CPU seconds each part used since now: the
    server, the agent (with its fence), the task processes they reaped
    (``true`` and its exec), and the whole machine less its idle time."""
    assert cluster.server is not None and cluster.server.proc is not None
    server = psutil.Process(cluster.server.proc.pid)
    agent_proc = next(iter(cluster.agents.values())).proc
    assert agent_proc is not None
    agent = psutil.Process(agent_proc.pid)

    def own(p: psutil.Process) -> float:
        t = p.cpu_times()
        return float(t.user + t.system)

    def agent_side() -> tuple[float, float]:
        procs = [agent, *agent.children(recursive=True)]
        mine = children = 0.0
        for p in procs:
            try:
                t = p.cpu_times()
            except psutil.Error:
                continue
            mine += t.user + t.system
            children += t.children_user + t.children_system
        return mine, children

    def busy() -> float:
        t = psutil.cpu_times()
        return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))

    server0, (agent0, tasks0), machine0 = own(server), agent_side(), busy()
    return {"server": lambda: own(server) - server0,
            "agent": lambda: agent_side()[0] - agent0,
            "tasks": lambda: agent_side()[1] - tasks0,
            "machine busy": lambda: busy() - machine0}


def _all_succeeded(cluster: Cluster, jobs: int) -> bool:
    """Whether every task succeeded; stops the run at the first failed job
    (a task the agent's fence stopped under load fails its job, and waiting
    out the timeout for a success that cannot come tells nothing)."""
    assert cluster.server is not None
    with sqlite3.connect(cluster.server.data_dir / "apportion.db") as conn:
        failed = conn.execute("SELECT id, reason FROM jobs WHERE state = 'failed'").fetchall()
    if failed:
        job_id, reason = failed[0]
        raise SystemExit(f"{len(failed)} job(s) failed, so not all {jobs} can succeed; "
                         f"{job_id}: {reason}")
    return _succeeded(cluster) >= jobs


def _succeeded(cluster: Cluster) -> int:
    assert cluster.server is not None
    with sqlite3.connect(cluster.server.data_dir / "apportion.db") as conn:
        return int(conn.execute("SELECT count(*) FROM tasks WHERE state = 'succeeded'"
                                ).fetchone()[0])


if __name__ == "__main__":
    sys.exit(main())
