"""The table of issue 16: every shipped trace (and two generated logs) ×
fifo / sjf / adaptive with EASY backfilling: mean wait, mean bounded
slowdown, the mean absolute error of the estimates each planned with and
how often a reservation moved. Prints markdown rows for docs/scheduling.md.

    .venv/bin/python bench/bench_adaptive.py [--only NAME] [--orders]

``--orders`` adds adaptive with shortest-predicted-first order at the same
aging bound, and the aging bounds 2 and 4 days (the measurement that kept
response ratio and chose 3 days). Logs without requested times (Lublin-256,
Philly) carry the actual run time as every strategy's estimate; the
"learning only" rows hide it from adaptive, which then plans on what it
learns alone. A few minutes on the shared 2-core machine.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from common import write_result

from apportion.core.scheduling import SchedulerConfig
from apportion.core.scheduling.adaptive import AdaptiveOrder
from apportion.core.scheduling.policies import STRATEGIES
from apportion.core.simulator import SimConfig, simulate
from apportion.traces import Trace, read_swf, read_trace, uniform_nodes
from apportion.workload_model import generate, to_swf

TRACES = Path(__file__).parents[1] / "../shared/data/traces"
DAY = 86400.0


@dataclass(frozen=True)
class Log:
    name: str
    load: Callable[[Path], Trace]
    hides: bool = False
    """The log has no requested times: add a "learning only" adaptive row."""


def _model(tmp: Path, users: int) -> Trace:
    path = tmp / f"model-u{users}.swf"
    path.write_text(to_swf(generate(10000, 256, seed=1, load=0.7, users=users), 256,
                           f"apportion.workload_model seed 1 users {users}"))
    return read_swf(path)


def _philly_busy(_: Path) -> Trace:
    trace = read_trace(TRACES / "philly-gpu-jobs.csv.gz", limit=10000)
    trace.nodes = uniform_nodes(64, {"gpu": "8"})
    return trace


LOGS = (
    Log("KTH-SP2", lambda _: read_trace(TRACES / "KTH-SP2-1996-2.1-cln.swf.gz")),
    Log("Lublin-256", lambda _: read_trace(TRACES / "lublin_256.swf.gz"), hides=True),
    Log("Philly (300 x 8 GPUs)", lambda _: read_trace(TRACES / "philly-gpu-jobs.csv.gz"),
        hides=True),
    Log("Philly, first 10,000 jobs on 64 x 8 GPUs", _philly_busy, hides=True),
    Log("Lublin-Feitelson + Tsafrir estimates, 100 users", lambda tmp: _model(tmp, 100)),
    Log("Lublin-Feitelson + Tsafrir estimates, no users", lambda tmp: _model(tmp, 0)),
)


def _runs(log: Log, orders: bool) -> list[tuple[str, str, float, bool]]:
    """(label, strategy, aging bound, learn only)."""
    bound = SchedulerConfig().aging_bound_s
    out = [("fifo", "fifo", bound, False), ("sjf", "sjf", bound, False),
           ("adaptive", "adaptive", bound, False)]
    if log.hides:
        out.append(("adaptive, learning only", "adaptive", bound, True))
    if orders:
        out += [("adaptive sjf", "adaptive-sjf", bound, False)]
        out += [(f"adaptive, bound {b / DAY:.0f} d", "adaptive", b, False)
                for b in (2 * DAY, 4 * DAY)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", help="run only the logs whose name contains this")
    parser.add_argument("--orders", action="store_true")
    parser.add_argument("--tmp", type=Path, default=Path("/tmp"))
    args = parser.parse_args()
    STRATEGIES["adaptive-sjf"] = replace(STRATEGIES["adaptive"], name="adaptive-sjf",
                                         order=AdaptiveOrder("sjf"))
    rows = []
    print("| log | strategy | mean wait h | max wait h | mean bsld | est MAE h | res moves "
          "| replay s |")
    print("|---|---|--:|--:|--:|--:|--:|--:|")
    for log in LOGS:
        if args.only and args.only not in log.name:
            continue
        trace = log.load(args.tmp)
        for label, name, bound, hide in _runs(log, args.orders):
            config = SimConfig(SchedulerConfig(strategy=name, backfill="easy",
                                               aging_bound_s=bound),
                               primary=trace.primary, learn_only=hide)
            t0 = time.perf_counter()
            m = simulate(trace.jobs, trace.nodes, config).metrics
            wall = time.perf_counter() - t0
            mae = m["estimate_mae_s"]
            print(f"| {log.name} | {label} | {float(m['mean_wait_s'] or 0) / 3600:.2f} "
                  f"| {float(m['max_wait_s'] or 0) / 3600:.1f} "
                  f"| {float(m['mean_bounded_slowdown'] or 0):,.2f} "
                  f"| {'-' if mae is None else f'{float(mae) / 3600:.2f}'} "
                  f"| {m['reservation_moves']:,} | {wall:.1f} |", flush=True)
            rows.append({"log": log.name, "strategy": label, "wall_s": round(wall, 2), **m})
    write_result("adaptive", {"rows": rows})


if __name__ == "__main__":
    main()
