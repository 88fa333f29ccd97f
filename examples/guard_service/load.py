"""Load the example model server and report how it held up.

Starts ``app.py`` under uvicorn on 127.0.0.1 (a free port), sends a bounded
number of requests (``--requests``) for at most ``--duration`` seconds with
``--concurrency`` clients, samples the server's RSS every 20 ms, reads the
guard's report, and stops the server. ``--compare`` runs the same load
unguarded as well. Only 127.0.0.1 is ever contacted.

    .venv/bin/python examples/guard_service/load.py --compare
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
MIB = 2**20


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def start_server(port: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable, "-m", "uvicorn", "examples.guard_service.app:app",
        "--host", HOST, "--port", str(port), "--log-level", "warning", "--no-access-log",
    ]
    with log.open("wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            cmd, cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
        )


def wait_ready(base: str, proc: subprocess.Popen[bytes], limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base}/stats", timeout=1.0).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError("server was not ready in time")


async def sample_rss(pid: int, peak: list[int], stop: asyncio.Event) -> None:
    proc = psutil.Process(pid)
    while not stop.is_set():
        with contextlib.suppress(psutil.Error):
            peak[0] = max(peak[0], proc.memory_info().rss)
        await asyncio.sleep(0.02)


async def drive(base: str, args: argparse.Namespace, pid: int) -> dict[str, Any]:
    rng = random.Random(args.seed)
    # Skewed popularity: a few hot models and a long tail, as real traffic has.
    weights = [1.0 / (i + 1) for i in range(args.models)]
    plan = rng.choices(range(args.models), weights=weights, k=args.requests)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for model_id in plan:
        queue.put_nowait(model_id)
    codes: Counter[str] = Counter()
    peak = [0]
    stop = asyncio.Event()
    deadline = time.monotonic() + args.duration
    started = time.monotonic()

    async def client(http: httpx.AsyncClient) -> None:
        while time.monotonic() < deadline:
            try:
                model_id = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            try:
                resp = await http.get(f"{base}/predict/{model_id}")
                codes[str(resp.status_code)] += 1
            except httpx.HTTPError as exc:
                codes[type(exc).__name__] += 1

    sampler = asyncio.create_task(sample_rss(pid, peak, stop))
    limits = httpx.Limits(max_connections=args.concurrency)
    async with httpx.AsyncClient(timeout=30.0, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(args.concurrency)))
    elapsed = time.monotonic() - started
    stop.set()
    await sampler
    return {"codes": dict(codes), "peak_rss": peak[0], "seconds": round(elapsed, 2)}


def run_once(args: argparse.Namespace, enabled: bool) -> dict[str, Any]:
    port = free_port()
    base = f"http://{HOST}:{port}"
    env = {
        "GUARD_ENABLED": "1" if enabled else "0",
        "GUARD_BUDGET": args.budget,
        "GUARD_MODEL_SIZE": args.model_size,
        "GUARD_MODELS": str(args.models),
        "GUARD_REQUEST_MEM": args.request_mem,
        "GUARD_WORK_MS": str(args.work_ms),
        "GUARD_WAIT_MS": str(args.wait_ms),
    }
    log = Path(tempfile.gettempdir()) / f"guard_service_{'on' if enabled else 'off'}.log"
    proc = start_server(port, env, log)
    try:
        wait_ready(base, proc)
        start_rss = psutil.Process(proc.pid).memory_info().rss
        result = asyncio.run(drive(base, args, proc.pid))
        stats = httpx.get(f"{base}/stats", timeout=5.0).json()
        report = httpx.get(f"{base}/guard/report", timeout=5.0).json()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return {
        "guarded": enabled,
        "budget": stats["budget"],
        "start_rss": start_rss,
        **result,
        "cache": stats["cache"] if enabled else {"models": stats["plain_cache_models"]},
        "ledger_refusals": stats["ledger"]["refusals"],
        "suggestions": [s["message"] for s in report["suggestions"]],
        "server_log": str(log),
    }


def describe(r: dict[str, Any]) -> str:
    budget = r["budget"]
    codes = r["codes"]
    served = codes.get("200", 0)
    refused = codes.get("503", 0)
    other = sum(v for k, v in codes.items() if k not in ("200", "503"))
    lines = [
        f"{'guarded' if r['guarded'] else 'unguarded'}: {served} served, {refused} refused "
        f"with 503, {other} other, in {r['seconds']} s",
        f"  peak RSS {r['peak_rss'] / MIB:.0f} MiB vs budget {budget / MIB:.0f} MiB "
        f"({100 * r['peak_rss'] / budget:.0f} %), start RSS {r['start_rss'] / MIB:.0f} MiB",
    ]
    if r["guarded"]:
        c = r["cache"]
        lines.append(
            f"  cache: {c['hits']} hits, {c['misses']} misses, {c['evictions']} evictions, "
            f"{c['waits']} loads waited for room, {c['refused']} refused, "
            f"peak {c['peak_bytes'] / MIB:.0f} MiB cached"
        )
    else:
        lines.append(f"  cache: {r['cache']['models']} models kept, never evicted")
    lines.append(f"  server log: {r['server_log']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1500, help="at most this many requests")
    parser.add_argument("--duration", type=float, default=60.0, help="at most this many seconds")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--budget", default="256Mi")
    parser.add_argument("--model-size", default="40Mi")
    parser.add_argument("--models", type=int, default=8)
    parser.add_argument("--request-mem", default="8Mi")
    parser.add_argument("--work-ms", type=float, default=20.0)
    parser.add_argument("--wait-ms", type=float, default=1000.0,
                        help="how long a request may wait for room before 503")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--compare", action="store_true", help="also run unguarded")
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    args = parser.parse_args()
    args.requests = min(args.requests, 100_000)
    args.duration = min(args.duration, 600.0)

    results = [run_once(args, enabled=True)]
    if args.compare:
        results.append(run_once(args, enabled=False))
    for r in results:
        print(describe(r))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
