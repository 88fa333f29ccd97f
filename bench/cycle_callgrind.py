"""``bench_scheduler.py``'s cycle part for callgrind: only the measured
cycles' ``schedule_cycle`` is counted.

The fill runs with instrumentation off; once it is done the script writes
``<dir>/ready.<pid>`` and waits for ``<dir>/go.<pid>``, so that
instrumentation is switched on from outside; each measured cycle is called
through ``operator.call``, the C function callgrind collects under::

    valgrind --tool=callgrind --instr-atstart=no --toggle-collect=_operator_call \\
        --callgrind-out-file=/tmp/cycle.cg python bench/cycle_callgrind.py 8 /tmp/cg &
    # when /tmp/cg/ready.PID appears:
    callgrind_control -i on PID && touch /tmp/cg/go.PID
"""

from __future__ import annotations

import operator
import os
import sys
import time
from typing import Any

import bench_scheduler as bench


def main() -> None:
    cycles, where = int(sys.argv[1]), sys.argv[2]
    os.makedirs(where, exist_ok=True)
    cycle = bench.schedule_cycle
    measured = bench._measure
    counting = False

    def called(*args: Any, **kwargs: Any) -> Any:
        return operator.call(cycle, *args, **kwargs) if counting else cycle(*args, **kwargs)

    def measure(*args: Any, **kwargs: Any) -> Any:
        nonlocal counting
        pid = os.getpid()
        open(f"{where}/ready.{pid}", "w").close()
        while not os.path.exists(f"{where}/go.{pid}"):
            time.sleep(0.2)
        counting = True
        return measured(*args, **kwargs)

    bench.schedule_cycle = called  # type: ignore[assignment]
    bench._measure = measure  # type: ignore[assignment]
    out = bench.cycle_latency(10_000, 10_000, cycles)
    print({k: out[k] for k in ("starts_per_cycle_mean", "running")})


if __name__ == "__main__":
    main()
