"""Server CPU spent on heartbeats from 1,000 nodes every 10 s.

Goal (issue 5): the server handles heartbeats from 1,000 simulated nodes
every 10 s with its CPU below 25 % of one core.

A real ``apportion server`` (SQLite store) is started on loopback; 1,000
nodes register through the agent protocol (a quarter of them GPU servers
with 8 devices each), then each node sends a heartbeat every 10 s with a
usage payload shaped like the agent's own (CPU, memory, disk, load, per-GPU
readings, running tasks), phase-spread over the interval like real agents
that started at different times. The server's own CPU time is read with
psutil over a steady window after one warm-up round; an idle window of the
same server before the load gives the background cost (scheduler loop,
sweeper, alert and history loops), reported apart.

    .venv/bin/python bench/bench_heartbeats.py [--nodes 1000] [--interval 10] [--rounds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
from common import write_result

from support import ServerProcess

GPU_EVERY = 4  # one node in four is an 8-GPU server


def _node(i: int) -> dict[str, Any]:
    resources: dict[str, Any] = {"cpu": "64", "memory": "512Gi", "storage": "4Ti"}
    devices: dict[str, Any] = {}
    if i % GPU_EVERY == 0:
        resources["gpu"] = 8
        devices["gpu"] = [{"id": str(g), "model": "H100", "memory": "80Gi",
                           "uuid": f"GPU-{i:04d}-{g}"} for g in range(8)]
    return {"node": {"name": f"hb{i:04d}", "resources": resources, "devices": devices,
                     "labels": {"facility": f"f{i % 3}", "type": "gpu" if devices else "cpu"}},
            "agent": {"id": f"agent-{i:04d}", "heartbeat_s": 10.0}}


def _usage(i: int, rng: random.Random) -> dict[str, Any]:
    gpus = [{"index": g, "uuid": f"GPU-{i:04d}-{g}", "utilization_percent": rng.randint(0, 100),
             "memory_used": rng.randint(0, 80 << 30), "memory_total": 80 << 30,
             "temperature_c": rng.randint(35, 75), "ecc_errors": 0, "xid_errors": 0,
             "last_xid": None} for g in range(8 if i % GPU_EVERY == 0 else 0)]
    return {"cpu_percent": round(rng.uniform(0, 100), 1),
            "memory_used": rng.randint(1 << 30, 400 << 30), "memory_total": 512 << 30,
            "memory_percent": round(rng.uniform(1, 78), 1),
            "disk_used": 1 << 40, "disk_total": 4 << 40, "disk_percent": 25.0,
            "load_average": [1.0, 1.2, 1.1], "gpus": gpus}


def _register(server: ServerProcess, nodes: int) -> None:
    with server.client() as c:
        for i in range(nodes):
            r = c.post("/api/v1/agents/register", json=_node(i))
            assert r.status_code == 200, r.text


async def _beat(client: httpx.AsyncClient, i: int, rng: random.Random,
                latencies: list[float], errors: list[int]) -> None:
    body = {"agent_id": f"agent-{i:04d}", "usage": _usage(i, rng),
            "tasks": [{"id": f"t{i}", "job_id": f"j{i}", "pid": 1000 + i, "state": "running"}]}
    started = time.perf_counter()
    try:
        r = await client.post(f"/api/v1/agents/hb{i:04d}/heartbeat", json=body)
        ok = r.status_code == 200
    except httpx.HTTPError:
        ok = False
    latencies.append(time.perf_counter() - started)
    if not ok:
        errors.append(i)


async def _rounds(server: ServerProcess, nodes: int, interval: float, rounds: int,
                  latencies: list[float], errors: list[int]) -> None:
    """Node i beats at start + i * interval / nodes + k * interval."""
    rng = random.Random(7)
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=server.url, headers=server.headers, limits=limits,
                                 timeout=30) as client:
        start = time.perf_counter()
        pending: set[asyncio.Task[None]] = set()
        for k in range(rounds):
            for i in range(nodes):
                due = start + k * interval + i * interval / nodes
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.create_task(_beat(client, i, rng, latencies, errors))
                pending.add(task)
                task.add_done_callback(pending.discard)
        await asyncio.gather(*pending)


def _cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else 0.0


def run(nodes: int, interval: float, rounds: int, idle_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(Path(tmp)).start()
        try:
            assert server.proc is not None
            proc = psutil.Process(server.proc.pid)
            _register(server, nodes)
            time.sleep(2)  # let the registrations' follow-up work settle
            idle_cpu0, idle_t0 = _cpu_seconds(proc), time.perf_counter()
            time.sleep(idle_s)
            idle_pct = 100 * (_cpu_seconds(proc) - idle_cpu0) / (time.perf_counter() - idle_t0)
            warm: list[float] = []
            asyncio.run(_rounds(server, nodes, interval, 1, warm, []))
            latencies: list[float] = []
            errors: list[int] = []
            cpu0, t0 = _cpu_seconds(proc), time.perf_counter()
            asyncio.run(_rounds(server, nodes, interval, rounds, latencies, errors))
            wall = time.perf_counter() - t0
            cpu = _cpu_seconds(proc) - cpu0
            rss = proc.memory_info().rss
        finally:
            server.stop()
    return {
        "nodes": nodes, "interval_s": interval, "rounds": rounds,
        "heartbeats": len(latencies), "errors": len(errors),
        "heartbeats_per_s": round(len(latencies) / wall, 1),
        "wall_s": round(wall, 2), "server_cpu_s": round(cpu, 2),
        "server_cpu_percent_of_one_core": round(100 * cpu / wall, 1),
        "idle_server_cpu_percent_of_one_core": round(idle_pct, 1),
        "cpu_ms_per_heartbeat": round(1000 * cpu / max(1, len(latencies)), 3),
        "latency_p50_ms": round(1000 * _percentile(latencies, 50), 2),
        "latency_p99_ms": round(1000 * _percentile(latencies, 99), 2),
        "server_rss_mib": round(rss / 2**20, 1),
        "goal_cpu_percent_of_one_core": 25,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    args = parser.parse_args()
    if not 1 <= args.nodes <= 5000 or not 1 <= args.rounds <= 30:
        parser.error("--nodes must be 1..5000 and --rounds 1..30 (bounded load)")
    figures = run(args.nodes, args.interval, args.rounds, args.idle_seconds)
    print(f"heartbeats={figures['heartbeats']} ({figures['heartbeats_per_s']}/s) "
          f"errors={figures['errors']}  server CPU={figures['server_cpu_percent_of_one_core']}% "
          f"of one core (idle {figures['idle_server_cpu_percent_of_one_core']}%)  "
          f"{figures['cpu_ms_per_heartbeat']} ms CPU/heartbeat  "
          f"p50={figures['latency_p50_ms']} ms p99={figures['latency_p99_ms']} ms")
    write_result("heartbeats", figures)


if __name__ == "__main__":
    main()
