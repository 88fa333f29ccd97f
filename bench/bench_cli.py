"""Start-up of the ``apportion`` command: wall time of one ``apportion submit``
call, process start to exit, against a live server on loopback.

Goal (issue 13; a figure, never pass/fail): p50 <= 100 ms over 20 calls.

    .venv/bin/python bench/bench_cli.py [--calls 20]

The bench starts ``apportion server`` on a free loopback port with a fresh
SQLite store, registers one node, then times ``apportion submit --cpu 1
--memory 64Mi`` (a pure lease: no agent needed) and ``apportion submit
--help`` as separate processes, the way a shell loop calls them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from common import write_result

from support import ServerProcess

GOAL_MS = 100.0


def _apportion() -> list[str]:
    found = shutil.which("apportion", path=str(Path(os.sys.executable).parent))
    return [found] if found else [os.sys.executable, "-m", "apportion.cli.main"]


def time_calls(args: list[str], env: dict[str, str], calls: int) -> list[float]:
    out = []
    for _ in range(calls):
        start = time.perf_counter()
        proc = subprocess.run([*_apportion(), *args], env=env, capture_output=True, text=True)
        out.append((time.perf_counter() - start) * 1000)
        if proc.returncode != 0:
            raise RuntimeError(f"apportion {' '.join(args)} failed: {proc.stderr}")
    return out


def _summary(times: list[float]) -> dict[str, Any]:
    ordered = sorted(times)
    return {"calls": len(times), "p50_ms": round(statistics.median(ordered), 1),
            "min_ms": round(ordered[0], 1), "max_ms": round(ordered[-1], 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(Path(tmp)).start()
        try:
            env = {k: v for k, v in os.environ.items() if not k.startswith("APPORTION_")}
            env.update(APPORTION_SERVER=server.url, APPORTION_TOKEN=server.token,
                       APPORTION_CONFIG=str(Path(tmp) / "none.toml"))
            with server.client() as api:
                api.post("/api/v1/nodes", json={"name": "bench-1",
                                                "resources": {"cpu": "64", "memory": "256Gi"}})
            submit = _summary(time_calls(["submit", "--cpu", "1", "--memory", "64Mi"], env,
                                         args.calls))
            helped = _summary(time_calls(["submit", "--help"], env, args.calls))
        finally:
            server.stop()
    print(f"apportion submit: p50 {submit['p50_ms']} ms over {submit['calls']} calls "
          f"(min {submit['min_ms']}, max {submit['max_ms']}; goal p50 <= {GOAL_MS:.0f} ms)")
    print(f"apportion submit --help: p50 {helped['p50_ms']} ms")
    write_result("cli", {"submit": submit, "submit_help": helped, "goal_p50_ms": GOAL_MS})


if __name__ == "__main__":
    main()
