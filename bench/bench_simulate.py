"""Replay speed of every shipped trace, and of each ``--compare`` row on KTH-SP2.

Goals (issue 13; figures, never pass/fail):
* >= 30,000 jobs/s of replay (FIFO + EASY) on every trace in
  ``../shared/data/traces`` (KTH-SP2 and Lublin-256 SWF, the Philly GPU CSV);
* every row of ``apportion simulate KTH-SP2 --compare`` (fifo, sjf, fairshare,
  adaptive x none, easy, conservative) in <= 1.5 s.

    .venv/bin/python bench/bench_simulate.py [--strategy fifo] [--backfill easy] [--no-compare]

Reading a trace is timed apart from the replay. The parallel-machine logs
replay on the counted pool (``core/poolsim.py``), Philly on the GPU fleet
(``core/gpufleet.py``), which hands over to the node model at a first wait.
"""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path
from typing import Any

from common import write_result

from apportion.core.scheduling import SchedulerConfig
from apportion.core.simulator import SimConfig, simulate
from apportion.traces import Trace, read_trace

TRACES = Path(__file__).parents[1] / "../shared/data/traces"
FILES = ("KTH-SP2-1996-2.1-cln.swf.gz", "lublin_256.swf.gz", "philly-gpu-jobs.csv.gz")
GOAL_JOBS_PER_S = 30_000
GOAL_ROW_S = 1.5


def replay(trace: Trace, strategy: str, backfill: str) -> dict[str, Any]:
    config = SimConfig(SchedulerConfig(strategy=strategy, backfill=backfill),
                       primary=trace.primary)
    w, c = time.perf_counter(), time.process_time()
    result = simulate(trace.jobs, trace.nodes, config)
    wall, cpu = time.perf_counter() - w, time.process_time() - c
    m = result.metrics
    return {"strategy": strategy, "backfill": backfill, "jobs": m["jobs"],
            "replay_wall_s": round(wall, 3), "replay_cpu_s": round(cpu, 3),
            "jobs_per_s": round(len(trace.jobs) / wall),
            "mean_wait_h": round(float(m["mean_wait_s"] or 0) / 3600, 2),
            "mean_bsld": round(float(m["mean_bounded_slowdown"] or 0), 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategy", default="fifo")
    parser.add_argument("--backfill", default="easy")
    parser.add_argument("--no-compare", action="store_true",
                        help="skip the per-row timing of the KTH-SP2 comparison")
    args = parser.parse_args()
    traces: dict[str, Trace] = {}
    runs = []
    for name in FILES:
        path = TRACES / name
        if not path.exists():
            print(f"skipped: {path} not found")
            continue
        t0 = time.perf_counter()
        traces[name] = read_trace(path)
        read_s = time.perf_counter() - t0
        gc.freeze()  # as `apportion simulate` does once the trace is read
        row = replay(traces[name], args.strategy, args.backfill) | {"trace": name,
                                                                   "read_s": round(read_s, 3)}
        runs.append(row)
        print(f"{name}: {row['jobs']:,} jobs, {args.strategy}+{args.backfill}: "
              f"{row['jobs_per_s']:,} jobs/s of replay (goal >= {GOAL_JOBS_PER_S:,}); "
              f"{row['replay_wall_s']:.2f} s wall, {row['replay_cpu_s']:.2f} s cpu, read "
              f"{read_s:.2f} s; mean wait {row['mean_wait_h']:.2f} h")
    rows = []
    kth = traces.get(FILES[0])
    # `apportion simulate KTH-SP2 --compare` holds that trace alone: the other
    # traces' jobs (Philly's 82,247) would make every full collection in the
    # rows walk them too, which a user's run does not pay.
    traces.clear()
    gc.collect()
    if kth is not None and not args.no_compare:
        for strategy in ("fifo", "sjf", "fairshare", "adaptive"):
            for backfill in ("none", "easy", "conservative"):
                row = replay(kth, strategy, backfill)
                rows.append(row)
                print(f"KTH-SP2 --compare row {strategy}+{backfill}: {row['replay_wall_s']:.2f}"
                      f" s (goal <= {GOAL_ROW_S} s)")
    write_result("simulate", {"runs": runs, "goal_jobs_per_s": GOAL_JOBS_PER_S,
                              "kth_compare_rows": rows, "goal_row_s": GOAL_ROW_S})


if __name__ == "__main__":
    main()
