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
import subprocess
import tempfile
import time
from typing import Any

import sqlalchemy as sa
import uvicorn
from bench_grant_loop import TOKEN, _Connections
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

    def __init__(self, conns: _Connections) -> None:
        self.conns = conns
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


async def _measure(rounds: int, concurrency: int) -> dict[str, Any]:
    from apportion.server.app import create_app
    from apportion.service.settings import Settings

    app = create_app(Settings.from_env())
    config = uvicorn.Config(app, http="httptools", loop="uvloop", log_config=None,
                            access_log=False)
    config.load()
    async with app.router.lifespan_context(app):
        conns = _Connections(config, asyncio.get_running_loop())
        agent = _Agent(conns)
        assert "node" in await agent.one(_request(b"POST", b"/api/v1/agents/register",
                                                  REGISTER))
        services = app.state.ctx
        for task in [*services._tasks, *services._leading]:
            task.cancel()
        await asyncio.sleep(0.05)
        assert services.leadership.is_leader, "deposed before the rounds"
        statements = [0]

        texts: dict[str, int] = {}

        def count(_c: Any, _k: Any, sql: str, *_: Any) -> None:
            statements[0] += 1
            if os.environ.get("BENCH_SQL"):
                texts[sql] = texts.get(sql, 0) + 1

        engines = {services.uow._writer}
        for engine in engines:
            sa.event.listen(engine, "before_cursor_execute", count)
        submit = _request(b"POST", b"/api/v1/jobs", SUBMIT)

        async def one_round() -> int:
            await conns.round([submit] * concurrency)
            for protocol in conns.protocols[:concurrency]:
                protocol.transport.writes.clear()
            await services.jobs.run_cycle()
            return await agent.poll_and_report()

        for _ in range(20):  # warm-up
            await one_round()
        statements[0] = 0
        done = 0
        _instrument("on")
        cpu = time.process_time()
        for _ in range(rounds):
            done += await one_round()
        cpu = time.process_time() - cpu
        _instrument("off")
        jobs = rounds * concurrency
        for sql, n in sorted(texts.items(), key=lambda kv: -kv[1]):
            print(f"{n / jobs:6.2f} {' '.join(sql.split())[:150]}")
        assert done == jobs, (done, jobs)
        return {"jobs": jobs, "cpu_ms_per_job": round(cpu / jobs * 1000, 3),
                "statements_per_job": round(statements[0] / jobs, 2)}


def _instrument(state: str) -> None:
    """Under ``valgrind --tool=callgrind --instr-atstart=no``, count only the
    measured rounds (BENCH_CALLGRIND=1)."""
    if os.environ.get("BENCH_CALLGRIND"):
        subprocess.run(["callgrind_control", "-i", state, str(os.getpid())], check=True,
                       capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    import uvloop

    with tempfile.TemporaryDirectory() as tmp:
        # A long leader timeout: under valgrind the lock's check would time
        # out and depose the server before its loops are stopped.
        os.environ.update({"APPORTION_DATA_DIR": tmp, "APPORTION_ADMIN_TOKEN": TOKEN,
                           "APPORTION_LOG_LEVEL": "WARNING", "APPORTION_LEADER_TIMEOUT": "600"})
        figures = uvloop.run(_measure(args.rounds, args.concurrency))
    print(f"{figures['jobs']} jobs: cpu={figures['cpu_ms_per_job']} ms/job  "
          f"statements={figures['statements_per_job']}/job")
    write_result("job_loop", figures)


if __name__ == "__main__":
    main()
