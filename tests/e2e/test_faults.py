"""The fault test of issue 11: 3 servers on one PostgreSQL, 3 agents, a
random stream of work over every server, random kill -9 of servers (the
leader first) and agents with restarts, for a bounded time; then, from the
database alone, the invariant. ``bench/bench_faults.py`` runs it longer."""

from __future__ import annotations

import os
from pathlib import Path

from e2e.faults import FaultRun, fault_group
from support import drop_postgres_database, postgres_database

SECONDS = float(os.environ.get("APPORTION_FAULT_SECONDS", "40"))


def test_random_work_and_kill9s_over_three_servers_break_nothing(tmp_path: Path) -> None:
    url, name = postgres_database()
    group = fault_group(tmp_path, url)
    try:
        run = FaultRun(group, seed=11)
        run.start_agents()
        report = run.run(SECONDS)
        print("\n".join(report.lines()))
        assert report.violation_count == 0, "\n".join(report.lines())
        assert report.faults["server kill -9"] >= 1 and report.leader_changes >= 1
        assert report.jobs["succeeded"] > 0 and not report.waiting, report.lines()
    finally:
        group.close()
        drop_postgres_database(name)
