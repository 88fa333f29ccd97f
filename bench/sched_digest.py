"""A digest of every decision ``bench_scheduler.py`` makes, to show that a
change to the scheduling core left them as they were.

Runs the benchmark's two workloads (its placements, then its cycle
benchmark) at the sizes given and hashes each cycle's result: placements
with their tasks, start, estimate, backfill flag and victims, reservations,
preemptions, every refusal (job, code, kind, message) and deadline risks.
Run it on two checkouts and compare the last line:

    PYTHONPATH=src .venv/bin/python bench/sched_digest.py [--jobs 100000] [--nodes 10000]
        [--pending 10000] [--cycles 20]

Timing is not measured here (the hashing would weigh on it).
"""

from __future__ import annotations

import hashlib
from typing import Any

import bench_scheduler

from apportion.core.scheduling import CycleResult

_cycle = bench_scheduler.schedule_cycle


def _digest_of(result: CycleResult) -> bytes:
    parts: list[Any] = []
    for p in result.placements:
        tasks = [(t.node, sorted(t.resources.items()), sorted(t.devices.items()), t.count)
                 for t in p.tasks]
        parts.append(("p", p.job_id, tasks, p.start, p.estimate, p.backfilled, p.preempted))
    parts.extend(("r", r.job_id, r.start, sorted((n, sorted(v.items()))
                                                  for n, v in r.nodes.items()))
                 for r in result.reservations)
    parts.extend(("x", x.victim, x.by, x.nodes) for x in result.preemptions)
    parts.extend(("u", job_id, f.code.value, f.kind.value, f.message)
                 for job_id, f in sorted(result.unplaced.items()))
    parts.extend(("d", d.job_id, d.deadline, d.expected_end, d.certain)
                 for d in result.deadline_risks)
    return repr(parts).encode()


def main() -> None:
    args = bench_scheduler.arguments(cycles=20).parse_args()
    total = hashlib.sha256()
    counts = {"cycles": 0, "placements": 0}

    def hashed(*a: Any, **kw: Any) -> CycleResult:
        result = _cycle(*a, **kw)
        total.update(_digest_of(result))
        counts["cycles"] += 1
        counts["placements"] += len(result.placements)
        return result

    bench_scheduler.schedule_cycle = hashed  # type: ignore[assignment]
    bench_scheduler.placements_per_second(args.jobs, args.nodes, args.batch)
    print(f"placements: {counts['cycles']} cycles, {counts['placements']} placements, "
          f"{total.hexdigest()}")
    bench_scheduler.cycle_latency(args.nodes, args.pending, args.cycles)
    print(f"all: {counts['cycles']} cycles, {counts['placements']} placements, "
          f"{total.hexdigest()}")


if __name__ == "__main__":
    main()
