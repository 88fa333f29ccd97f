"""Leader failover (issue 11): three servers on one PostgreSQL with the default
APPORTION_LEADER_TIMEOUT (5 s); the leader is killed (-9) again and again and
the time until another server leads (a new epoch, as a survivor answers
``GET /api/v1/cluster``) is measured. Goal: within the timeout.

    .venv/bin/python bench/bench_failover.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from common import write_result

from e2e.cluster import FAST_SERVER_ENV, ServerGroup, wait_for
from support import drop_postgres_database, postgres_database

TIMEOUT_S = 5.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    url, name = postgres_database()
    took: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-failover-") as tmp:
        group = ServerGroup(Path(tmp), url, size=3, server_env=dict(FAST_SERVER_ENV)).start()
        try:
            wait_for("a leader", lambda: group.cluster()["leader"]["server_id"], 30)
            for _ in range(args.rounds):
                leader = group.leader_index()
                assert leader is not None
                before = group.cluster()["leader"]["epoch"]
                survivor = next(i for i in range(3) if i != leader)
                group.servers[leader].kill9()
                killed = time.monotonic()
                while True:
                    try:
                        view = group.cluster(survivor)["leader"]
                    except httpx.HTTPError:
                        view = {"epoch": before, "server_id": None}
                    if view["server_id"] and view["epoch"] > before:
                        break
                    time.sleep(0.02)
                took.append(time.monotonic() - killed)
                print(f"leader killed; epoch {before} -> {view['epoch']} after "
                      f"{took[-1]:.2f} s")
                group.restart(leader)
        finally:
            group.close()
            drop_postgres_database(name)
    print(f"takeover after a kill -9: median {statistics.median(took):.2f} s, "
          f"max {max(took):.2f} s over {len(took)} rounds (goal: within {TIMEOUT_S:.0f} s)")
    write_result("failover", {"rounds": len(took), "takeover_s": [round(t, 3) for t in took],
                              "median_s": round(statistics.median(took), 3),
                              "max_s": round(max(took), 3), "goal_s": TIMEOUT_S})
    return 0


if __name__ == "__main__":
    sys.exit(main())
