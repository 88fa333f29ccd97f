"""The leader's cycles with a long queue, in process (issue 13): ``--jobs``
one-task jobs wait for one node of ``cpu=32``; each placed task's exit is
reported as an agent would, and a cycle runs after every end (the e2e bench
kicks one per end; its loop coalesces some). Prints the process CPU of the
cycles (the start commits they make included) per job: what the queue's
length costs the leader, without HTTP, agent or the machine's other load.

    .venv/bin/python bench/bench_leader_cycle.py [--jobs 2000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from common import write_result

from apportion.core.model import Node
from apportion.service.jobs import TaskReport
from apportion.service.settings import Settings
from apportion.service.wiring import Services, build
from service.builders import AGENT, as_leader


def _run(s: Services, jobs: int, out: dict[str, float]) -> None:
    async def scenario() -> None:
        await s.agents.register(Node("n1", {"cpu": 32000}), AGENT)
        for _ in range(jobs):
            await s.jobs.submit({"command": ["true"], "resources": {"cpu": "1"}}, "a")
        cycles = 0.0
        done = 0
        while done < jobs:
            started = time.process_time()
            await s.jobs.run_cycle()
            cycles += time.process_time() - started
            for _, task in s.jobs.cache.tasks_on("n1"):
                await s.jobs.task_report("n1", task.id, TaskReport("exited", exit_code=0))
                done += 1
                started = time.process_time()
                await s.jobs.run_cycle()
                cycles += time.process_time() - started
        out["cycle_cpu_ms_per_job"] = round(cycles / jobs * 1000, 3)

    as_leader(s, scenario)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    args = parser.parse_args()
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-cycle-") as tmp:
        s = build(Settings(data_dir=Path(tmp), database_url=None, admin_token=None,
                           config_file=None))
        try:
            _run(s, args.jobs, out)
        finally:
            s.uow.close()
    print(f"{args.jobs} jobs waiting for one node of cpu=32, a cycle per task end: "
          f"{out['cycle_cpu_ms_per_job']:.2f} ms of CPU in cycles per job")
    write_result("leader_cycle", {"jobs": args.jobs, **out})
    return 0


if __name__ == "__main__":
    sys.exit(main())
