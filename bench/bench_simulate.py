"""Wall time to replay the full KTH-SP2 log with EASY backfilling (FIFO order).

Goal (issue 3; a figure, never pass/fail): <= 5 s. Reading the trace is
timed apart from the replay.

    .venv/bin/python bench/bench_simulate.py [--trace PATH] [--strategy fifo] [--backfill easy]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import write_result

from apportion.core.scheduling import SchedulerConfig
from apportion.core.simulator import SimConfig, simulate
from apportion.traces import read_trace

KTH = Path(__file__).parents[1] / "../shared/data/traces/KTH-SP2-1996-2.1-cln.swf.gz"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trace", type=Path, default=KTH)
    parser.add_argument("--strategy", default="fifo")
    parser.add_argument("--backfill", default="easy")
    args = parser.parse_args()
    if not args.trace.exists():
        print(f"skipped: {args.trace} not found")
        return
    t0 = time.perf_counter()
    trace = read_trace(args.trace)
    read_s = time.perf_counter() - t0
    config = SimConfig(SchedulerConfig(strategy=args.strategy, backfill=args.backfill),
                       primary=trace.primary)
    w, c = time.perf_counter(), time.process_time()
    result = simulate(trace.jobs, trace.nodes, config)
    wall, cpu = time.perf_counter() - w, time.process_time() - c
    m = result.metrics
    print(f"{args.trace.name}: {m['jobs']:,} jobs, {args.strategy}+{args.backfill}: replay "
          f"{wall:.2f} s wall ({cpu:.2f} s cpu), read {read_s:.2f} s (goal <= 5 s); "
          f"mean wait {float(m['mean_wait_s'] or 0) / 3600:.2f} h, "
          f"mean bsld {float(m['mean_bounded_slowdown'] or 0):.2f}")
    write_result("simulate", {"trace": args.trace.name, "strategy": args.strategy,
                              "backfill": args.backfill, "jobs": m["jobs"],
                              "replay_wall_s": round(wall, 3), "replay_cpu_s": round(cpu, 3),
                              "read_s": round(read_s, 3), "goal_s": 5.0, "metrics": dict(m)})


if __name__ == "__main__":
    main()
