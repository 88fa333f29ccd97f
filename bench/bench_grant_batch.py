"""The group committer's transaction for one batch of grants, alone.

``bench_http_grants.py``'s server spends about a third of its CPU beside the
event loop, in the committer's worker thread: one transaction per batch
(BEGIN, the batch's multi-row statements, COMMIT and its fsync). This runs
that transaction (``GroupCommitter._transaction`` with the ledger's batch
writer) on one thread, without the loop, the GIL hand-offs or the network,
so its cost per batch can be counted steadily: with ``BENCH_CALLGRIND=1``
and ``--instr-atstart=no`` only the measured batches are counted, e.g.

    BENCH_CALLGRIND=1 PYTHONHASHSEED=0 valgrind --tool=callgrind --instr-atstart=no \
        .venv/bin/python bench/bench_grant_batch.py --batches 300

``--synchronous FULL`` (the server's) adds the commit's fsync, whose CPU
the kernel charges to the process (about 120-230 us a commit on the
session's VM); ``OFF`` (the default) leaves it out.

    .venv/bin/python bench/bench_grant_batch.py [--batches 2000] [--size 16]
        [--synchronous OFF|FULL]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from functools import partial
from typing import Any

from common import write_result

NODES = 1000


def _grants(round_: int, size: int) -> list[Any]:
    from apportion.core.model import Allocation, AllocationState
    from apportion.service.ledger_service import new_id
    from apportion.service.ledger_writes import GrantOp

    node = f"n{round_ * 7 % NODES:04d}"
    return [GrantOp(Allocation(new_id(), node, {"cpu": 500, "memory": 1 << 30}, {}, "bench",
                               {}, AllocationState.ACTIVE, 1.0e9 + round_))
            for _ in range(size)]


def measure(batches: int, size: int, synchronous: str) -> dict[str, Any]:
    from apportion.core.model import Node
    from apportion.service import committer
    from apportion.service.unit_of_work import UnitOfWork
    from apportion.store.database import create_engine, migrate
    from apportion.store.ledger_tables import insert_node

    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(f"sqlite:///{tmp}/a.db", sqlite_synchronous=synchronous)
        migrate(engine)
        with engine.begin() as conn:
            for i in range(NODES):
                insert_node(conn, Node(f"n{i:04d}", {"cpu": 10**12, "memory": 10**18}))
        uow = UnitOfWork(engine, origin="bench")
        commit = uow._committer  # the bench drives the committer's transaction directly

        def batch(round_: int) -> None:
            ops = _grants(round_, size)
            commit._transaction(partial(committer._call_batch, commit._write_batch, ops))

        for r in range(50):  # warm-up: statement caches, the WAL
            batch(r)
        _instrument("on")
        cpu = time.process_time()
        for r in range(batches):
            batch(r)
        cpu = time.process_time() - cpu
        _instrument("off")
        uow.close()
    return {"batches": batches, "size": size, "synchronous": synchronous,
            "cpu_us_per_batch": round(cpu / batches * 1e6, 1),
            "cpu_us_per_grant": round(cpu / batches / size * 1e6, 2)}


def _instrument(state: str) -> None:
    if os.environ.get("BENCH_CALLGRIND"):
        subprocess.run(["callgrind_control", "-i", state, str(os.getpid())], check=True,
                       capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=2000)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--synchronous", choices=["OFF", "FULL"], default="OFF")
    args = parser.parse_args()
    figures = measure(args.batches, args.size, args.synchronous)
    print(f"grant batch of {args.size}: cpu={figures['cpu_us_per_batch']} us/batch "
          f"({figures['cpu_us_per_grant']} us/grant), synchronous={args.synchronous}")
    write_result("grant_batch", figures)


if __name__ == "__main__":
    main()
