"""Start-up of the ``apportion`` command: wall time of one ``apportion submit``
call, process start to exit, against a live server on loopback.

Goal (issue 13; a figure, never pass/fail): p50 <= 100 ms over 20 calls.

    .venv/bin/python bench/bench_cli.py [--calls 20]

The bench starts ``apportion server`` on a free loopback port with a fresh
SQLite store, registers one node, then times ``apportion submit --cpu 1
--memory 64Mi`` (a pure lease: no agent needed) and ``apportion submit
--help`` as separate processes, the way a shell loop calls them.

The goal's figure is the installed program's: apportion's bytecode compiled,
as ``pip install`` leaves it (the bench compiles it first). An editable
install where PYTHONDONTWRITEBYTECODE is set, as on the development
machines, never writes bytecode, so each call compiles every apportion
module it imports: that figure is printed too (a copy of the package without
bytecode, first on the path).
"""

from __future__ import annotations

import argparse
import compileall
import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from common import write_result

import apportion
from support import ServerProcess

GOAL_MS = 100.0


def _apportion() -> list[str]:
    found = shutil.which("apportion", path=str(Path(os.sys.executable).parent))
    return [found] if found else [os.sys.executable, "-m", "apportion.cli.main"]


def time_calls(args: list[str], env: dict[str, str], calls: int
               ) -> tuple[list[float], list[float]]:
    """Wall and CPU (user + system) milliseconds of each call. The CPU time
    is what a loaded machine inflates least."""
    wall, cpu = [], []
    for _ in range(calls):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.run([*_apportion(), *args], env=env, capture_output=True, text=True)
        wall.append((time.perf_counter() - start) * 1000)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append((after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) * 1000)
        if proc.returncode != 0:
            raise RuntimeError(f"apportion {' '.join(args)} failed: {proc.stderr}")
    return wall, cpu


def _summary(times: tuple[list[float], list[float]]) -> dict[str, Any]:
    wall, cpu = times
    ordered = sorted(wall)
    return {"calls": len(wall), "p50_ms": round(statistics.median(ordered), 1),
            "min_ms": round(ordered[0], 1), "max_ms": round(ordered[-1], 1),
            "cpu_p50_ms": round(statistics.median(cpu), 1)}


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
            package = Path(apportion.__file__).parent
            compileall.compile_dir(package, quiet=1)
            lease = ["submit", "--cpu", "1", "--memory", "64Mi"]
            submit = _summary(time_calls(lease, env, args.calls))
            helped = _summary(time_calls(["submit", "--help"], env, args.calls))
            bare = Path(tmp) / "bare"
            shutil.copytree(package, bare / "apportion",
                            ignore=shutil.ignore_patterns("__pycache__"))
            no_bytecode = _summary(time_calls(
                lease, {**env, "PYTHONPATH": str(bare), "PYTHONDONTWRITEBYTECODE": "1"},
                args.calls))
        finally:
            server.stop()
    print(f"apportion submit: p50 {submit['p50_ms']} ms over {submit['calls']} calls "
          f"(min {submit['min_ms']}, max {submit['max_ms']}; cpu p50 {submit['cpu_p50_ms']} "
          f"ms; goal p50 <= {GOAL_MS:.0f} ms)")
    print(f"apportion submit --help: p50 {helped['p50_ms']} ms (cpu {helped['cpu_p50_ms']} ms)")
    print(f"apportion submit, apportion's bytecode compiled on every call: "
          f"p50 {no_bytecode['p50_ms']} ms (cpu {no_bytecode['cpu_p50_ms']} ms)")
    write_result("cli", {"submit": submit, "submit_help": helped,
                         "submit_no_bytecode": no_bytecode, "goal_p50_ms": GOAL_MS})


if __name__ == "__main__":
    main()
