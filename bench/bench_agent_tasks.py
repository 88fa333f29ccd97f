"""The agent's own cost of a short task, without a server (issue 13): the
runner prepares, starts, reaps and marks reported ``--tasks`` tasks running
``true``, at most 32 at once (the e2e bench's one agent with cpu=32), in a
work directory under ``--dir`` (default: the system's temporary directory,
the e2e bench's file system).

Prints the agent process's CPU per task (``time.process_time``: the task
processes are not counted) and the wall time per task, the event loop's
share of which bounds how many tasks one agent turns over a second. Count
its system calls with ``strace -c`` (runs of two sizes, subtracted).

    .venv/bin/python bench/bench_agent_tasks.py [--tasks 500] [--dir PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from common import write_result

from apportion.agent.limits import LimitMode, LimitSupport
from apportion.agent.local_task import LocalTask
from apportion.agent.protocol import Assignment
from apportion.agent.runner import Runner

AT_ONCE = 32


def _assignment(i: int) -> Assignment:
    return Assignment(f"t{i}", f"j{i}", 0, 1, f"a{i}", ("true",), {"cpu": "1"},
                      {"cpu": 1000}, {})


async def _run(root: Path, tasks: int) -> tuple[float, float]:
    done = asyncio.Event()
    slots = asyncio.Semaphore(AT_ONCE)
    ended = 0

    def on_exit(task: LocalTask) -> None:
        nonlocal ended
        runner.reported(task)
        slots.release()
        ended += 1
        if ended == tasks:
            done.set()

    runner = Runner(root, "n1", LimitSupport(LimitMode.RLIMIT_WATCHDOG, "bench"), on_exit)
    runner.open()
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(tasks):
        await slots.acquire()
        runner.spawn(runner.prepare(_assignment(i)))
    await done.wait()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    runner.close()
    return cpu, wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-agent-", dir=args.dir) as tmp:
        cpu, wall = asyncio.run(_run(Path(tmp), args.tasks))
    per_cpu, per_wall = cpu / args.tasks * 1000, wall / args.tasks * 1000
    print(f"{args.tasks} tasks of `true`, at most {AT_ONCE} at once, one runner")
    print(f"  agent CPU {per_cpu:.3f} ms a task; wall {per_wall:.3f} ms a task "
          f"({args.tasks / wall:.0f} tasks/s)")
    write_result("agent_tasks", {"tasks": args.tasks, "at_once": AT_ONCE,
                                 "agent_cpu_ms_per_task": round(per_cpu, 3),
                                 "wall_ms_per_task": round(per_wall, 3)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
