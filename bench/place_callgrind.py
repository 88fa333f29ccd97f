"""``bench_scheduler.py``'s placements part for callgrind: only the
``schedule_cycle`` calls are counted, each called through
``operator.call``, the C function callgrind collects under::

    cd bench && PYTHONHASHSEED=0 valgrind --tool=callgrind \\
        --toggle-collect=_operator_call --callgrind-out-file=/tmp/place.cg \\
        python place_callgrind.py 20000 2000

(bench/README.md, h29-place: 20,000 jobs on 2,000 nodes, batch 1000, is the
figure the placement sessions compare.)
"""

from __future__ import annotations

import operator
import sys
from typing import Any

import bench_scheduler as bench


def main() -> None:
    jobs, nodes = int(sys.argv[1]), int(sys.argv[2])
    cycle = bench.schedule_cycle

    def called(*args: Any, **kwargs: Any) -> Any:
        return operator.call(cycle, *args, **kwargs)

    bench.schedule_cycle = called  # type: ignore[assignment]
    print(bench.placements_per_second(jobs, nodes, 1000))


if __name__ == "__main__":
    main()
