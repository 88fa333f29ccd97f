"""Fault run (issue 11): 3 servers on one PostgreSQL, 3 agents, a random
stream of submits, cancels, releases and completions over every server, and
random kill -9 of servers (the leader first) and agents with restarts, for a
bounded time. Prints operations, faults injected, leader changes and
violations of the invariant found in the database (goal: 0).

    .venv/bin/python bench/bench_faults.py [--seconds 180] [--seed 7]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common import write_result

from e2e.faults import FaultRun, fault_group
from support import drop_postgres_database, postgres_database


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--servers", type=int, default=3)
    parser.add_argument("--agents", type=int, default=3)
    args = parser.parse_args()
    url, name = postgres_database()
    with tempfile.TemporaryDirectory(prefix="bench-faults-") as tmp:
        group = fault_group(Path(tmp), url, servers=args.servers)
        try:
            run = FaultRun(group, seed=args.seed, agents=args.agents)
            run.start_agents()
            report = run.run(args.seconds)
        finally:
            group.close()
            drop_postgres_database(name)
    for line in report.lines():
        print(line)
    print(f"violations: {report.violation_count} (goal: 0)")
    write_result("faults", {
        "seconds": report.seconds, "seed": args.seed, "servers": args.servers,
        "agents": args.agents, "operations": dict(report.operations),
        "faults": dict(report.faults), "leader_changes": report.leader_changes,
        "jobs": dict(report.jobs), "failures": dict(report.failures),
        "waiting": report.waiting, "stuck": report.stuck,
        "violations": {k: len(v) for k, v in report.violations.items()},
        "violation_count": report.violation_count, "goal_violations": 0})
    return 0 if report.violation_count == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
