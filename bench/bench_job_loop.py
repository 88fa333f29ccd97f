"""The server's CPU per job of ``bench_e2e.py``, in process, without the kernel.

A job's whole life on the server as the e2e bench drives it: its submission
(``POST /api/v1/jobs``), the cycle that places it, the agent's poll that
delivers it (``GET .../assignments``), the agent's ``running`` and exit
reports (``POST .../reports``, a batch each). uvicorn's httptools protocol
runs on in-memory connections as in ``bench_grant_loop.py``; one round
submits one job on each of 8 connections, runs one cycle, polls once and
sends the two batches of reports. Background loops are stopped, so every
round does the same work. The figures: the process's CPU per job and the
SQL statements per job (counted on the store's engines). Instructions per
job under ``valgrind --tool=callgrind`` are steadier than CPU time: run it
with two ``--rounds`` and take the difference.

    .venv/bin/python bench/bench_job_loop.py [--rounds 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from typing import Any

import sqlalchemy as sa
from bench_grant_loop import TOKEN, _Connections, _instrument, in_process, serving
from common import write_result

NODE = "node-a"
SUBMIT = {"command": ["true"], "resources": {"cpu": "1"}}
REGISTER = {"node": {"name": NODE, "resources": {"cpu": "32", "memory": "64Gi"}},
            "agent": {"id": "bench-agent", "heartbeat_s": 5.0}}


def _request(method: bytes, path: bytes, body: dict[str, Any] | None = None) -> bytes:
    raw = b"" if body is None else json.dumps(body).encode()
    return (method + b" " + path + b" HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
            b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: "
            + str(len(raw)).encode() + b"\r\n\r\n" + raw)


def _body(protocol: Any) -> Any:
    """The JSON body of the latest answer on a connection."""
    data = b"".join(protocol.transport.writes)
    protocol.transport.writes.clear()
    return json.loads(data.rpartition(b"\r\n\r\n")[2])


class _Agent:
    """What ``apportion agent`` sends for each task: a poll, then reports."""

    def __init__(self, conns: _Connections, *, running: bool = True) -> None:
        self.conns = conns
        self.running = running
        self.known: set[str] = set()
        self.epoch = ""
        self.version = -1

    async def one(self, request: bytes) -> Any:
        await self.conns.round([request])
        return _body(self.conns.protocols[0])

    async def poll_and_report(self) -> int:
        state = await self.one(_request(
            b"GET", f"/api/v1/agents/{NODE}/assignments?after={self.version}&epoch="
            f"{self.epoch}&wait=0".encode()))
        self.epoch, self.version = state["epoch"], state["seq"]
        new = [a["id"] for a in state["tasks"] if a["id"] not in self.known]
        self.known.update(new)
        if not new:
            return 0
        now = time.time()
        if self.running:
            await self.one(_request(b"POST", f"/api/v1/agents/{NODE}/reports".encode(), {
                "reports": [{"task": t, "state": "running", "times": {"started_at": now}}
                            for t in new]}))
        answers = await self.one(_request(b"POST", f"/api/v1/agents/{NODE}/reports".encode(), {
            "reports": [{"task": t, "state": "exited", "exit_code": 0,
                         "times": {"started_at": now, "exited_at": now + 0.001},
                         "usage": {"memory": 1048576.0, "cpu_seconds": 0.001,
                                   "runtime_s": 0.001}} for t in new]}))
        assert all(a.get("state") == "succeeded" for a in answers["answers"]), answers
        return len(new)


async def _measure(rounds: int, concurrency: int, *, running: bool) -> dict[str, Any]:
    async with serving() as (app, conns):
        agent = _Agent(conns, running=running)
        assert "node" in await agent.one(_request(b"POST", b"/api/v1/agents/register",
                                                  REGISTER))
        services = app.state.ctx
        for task in [*services._tasks, *services._leading]:
            task.cancel()
        await asyncio.sleep(0.05)
        assert services.leadership.is_leader, "deposed before the rounds"
        statements = _Statements(services.uow._writer)
        submit = _request(b"POST", b"/api/v1/jobs", SUBMIT)

        async def one_round() -> int:
            await conns.round([submit] * concurrency)
            for protocol in conns.protocols[:concurrency]:
                protocol.transport.writes.clear()
            await services.jobs.run_cycle()
            return await agent.poll_and_report()

        for _ in range(20):  # warm-up
            await one_round()
        statements.reset()
        done = 0
        _instrument("on")
        cpu = time.process_time()
        for _ in range(rounds):
            done += await one_round()
        cpu = time.process_time() - cpu
        _instrument("off")
        jobs = rounds * concurrency
        statements.show(jobs)
        assert done == jobs, (done, jobs)
        return {"jobs": jobs, "cpu_ms_per_job": round(cpu / jobs * 1000, 3),
                "statements_per_job": round(statements.count / jobs, 2)}


class _Statements:
    """Counts the statements the committer's engine runs (each one's text
    too with BENCH_SQL=1, shown per job)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.count = 0
        self.texts: dict[str, int] | None = {} if os.environ.get("BENCH_SQL") else None
        sa.event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, _conn: Any, _cursor: Any, sql: str, *_: Any) -> None:
        self.count += 1
        if self.texts is not None:
            self.texts[sql] = self.texts.get(sql, 0) + 1

    def reset(self) -> None:
        self.count = 0
        self.texts = {} if self.texts is not None else None

    def show(self, jobs: int) -> None:
        for sql, n in sorted((self.texts or {}).items(), key=lambda kv: -kv[1]):
            print(f"{n / jobs:6.2f} {' '.join(sql.split())[:150]}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--exits-only", action="store_true",
                        help="report each task's exit alone, without a `running` report "
                        "first: what the agent sends for a task as short as `true` (its "
                        "exit replaces the unsent `running` report)")
    args = parser.parse_args()
    # A long leader timeout: under valgrind the lock's check would time out
    # and depose the server before its loops are stopped.
    figures = in_process(_measure(args.rounds, args.concurrency,
                                  running=not args.exits_only),
                         APPORTION_LEADER_TIMEOUT="600")
    print(f"{figures['jobs']} jobs: cpu={figures['cpu_ms_per_job']} ms/job  "
          f"statements={figures['statements_per_job']}/job")
    write_result("job_loop_exits" if args.exits_only else "job_loop", figures)


if __name__ == "__main__":
    main()
