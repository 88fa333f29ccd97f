"""In-process ledger: grant + release pairs per second at 10,000 nodes.

Goal (issue 2): >= 100,000 pairs/s. Two figures: on a named node (the
ledger's bookkeeping alone) and with apportion choosing the best-fitting node
(through the free-capacity index). Heterogeneous fleet: seven node shapes.

    .venv/bin/python bench/bench_ledger.py [--pairs 200000]
"""

from __future__ import annotations

import argparse
import time

from common import write_result

from apportion.core.ledger import Ledger
from apportion.core.model import Device, Node, ReleaseReason

GiB = 2**30
SHAPES = [
    {"cpu": 8_000, "memory": 32 * GiB},
    {"cpu": 16_000, "memory": 64 * GiB},
    {"cpu": 32_000, "memory": 128 * GiB},
    {"cpu": 64_000, "memory": 256 * GiB},
    {"cpu": 96_000, "memory": 512 * GiB},
    {"cpu": 128_000, "memory": 1024 * GiB},
    {"cpu": 48_000, "memory": 384 * GiB, "gpu": 8},
]


def fleet(n: int) -> Ledger:
    ledger = Ledger()
    for i in range(n):
        shape = SHAPES[i % len(SHAPES)]
        devices = {"gpu": tuple(Device(str(g), "H100", 80 * GiB) for g in range(8))} \
            if "gpu" in shape else {}
        ledger.add_node(Node(f"n{i:05d}", dict(shape), devices,
                             {"facility": f"f{i % 4}"}))
    return ledger


def pairs(ledger: Ledger, count: int, request: dict[str, int], named: str | None) -> float:
    release = ledger.release
    grant = ledger.grant
    reason = ReleaseReason.RELEASED
    start = time.perf_counter()
    for i in range(count):
        alloc = grant(str(i), request, now=0.0, node=named)
        release(alloc.id, reason, 0.0)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=200_000)
    parser.add_argument("--nodes", type=int, default=10_000)
    args = parser.parse_args()
    ledger = fleet(args.nodes)
    small = {"cpu": 1_000, "memory": 2 * GiB}
    results = {
        "named_node_pairs_per_s": pairs(ledger, args.pairs, small, "n00042"),
        "best_fit_pairs_per_s": pairs(ledger, args.pairs // 4, small, None),
        "best_fit_gpu_pairs_per_s": pairs(ledger, args.pairs // 4,
                                          {"cpu": 4_000, "memory": 16 * GiB, "gpu": 2}, None),
    }
    for key, value in results.items():
        print(f"{key:28s} {value:12,.0f}")
    write_result("ledger", {"nodes": args.nodes, "goal_pairs_per_s": 100_000,
                            "results": {k: round(v) for k, v in results.items()}})


if __name__ == "__main__":
    main()
