"""The event loop's CPU per HTTP grant, in process, without the kernel.

``bench_http_grants.py`` is limited by the server's event loop (issue 13),
and its rate swings with whatever else the machine's two cores run. This
measures the loop's own share: uvicorn's httptools protocol, as the server
builds it, on 32 in-memory connections; each round feeds every connection
one grant request and waits for the 32 answers (one batch). The figures are
the loop thread's CPU per grant (``time.thread_time``) and the process's
(the loop plus the committer's worker thread); background loops (leader,
health, history) are stopped so only grants are counted. Instructions per
grant under ``valgrind --tool=callgrind`` are steadier still than CPU time:
with ``BENCH_CALLGRIND=1`` and ``--instr-atstart=no`` only the measured
rounds are counted (``--separate-threads=yes`` splits the loop's thread from
the committer's), e.g.

    BENCH_CALLGRIND=1 PYTHONHASHSEED=0 valgrind --tool=callgrind \
        --instr-atstart=no --separate-threads=yes \
        .venv/bin/python bench/bench_grant_loop.py --rounds 30

    .venv/bin/python bench/bench_grant_loop.py [--rounds 300] [--nodes 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import uvicorn
from common import write_result
from uvicorn.server import ServerState

CONNECTIONS = 32
TOKEN = "bench-grant-loop-admin-token-0123456789"
GRANT = {"resources": {"cpu": "500m", "memory": "1Gi"}, "owner": "bench"}


class _Transport:
    """What the protocol writes to, kept in memory."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8080), "peername": ("127.0.0.1", 40000)}.get(
            name, default)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


def _request(path: bytes, body: dict[str, Any]) -> bytes:
    raw = json.dumps(body).encode()
    return (b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
            b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: "
            + str(len(raw)).encode() + b"\r\n\r\n" + raw)


class _Connections:
    """32 protocols on in-memory transports, fed one request each per round."""

    def __init__(self, config: uvicorn.Config, loop: asyncio.AbstractEventLoop) -> None:
        state = ServerState()
        self.open = 0
        self.answered = asyncio.Event()
        self.protocols: list[Any] = []
        for _ in range(CONNECTIONS):
            protocol = config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=state, app_state={}, _loop=loop)
            protocol.connection_made(_Transport())
            complete = protocol.on_response_complete

            def counted(complete: Any = complete) -> None:
                complete()
                self.open -= 1
                if self.open == 0:
                    self.answered.set()

            protocol.on_response_complete = counted
            self.protocols.append(protocol)

    async def round(self, requests: list[bytes]) -> None:
        self.open = len(requests)
        self.answered.clear()
        for protocol, request in zip(self.protocols, requests, strict=False):
            protocol.data_received(request)
        await self.answered.wait()

    def statuses(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for protocol in self.protocols:
            for data in protocol.transport.writes:
                if data.startswith(b"HTTP/1.1 "):
                    key = data[9:12].decode()
                    counts[key] = counts.get(key, 0) + 1
        return counts


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[tuple[Any, _Connections]]:
    """The server's application, started, and its in-memory connections."""
    from apportion.server.app import create_app
    from apportion.service.settings import Settings

    app = create_app(Settings.from_env())
    config = uvicorn.Config(app, http="httptools", loop="uvloop", log_config=None,
                            access_log=False)
    config.load()
    async with app.router.lifespan_context(app):
        yield app, _Connections(config, asyncio.get_running_loop())


async def _measure(rounds: int, nodes: int) -> dict[str, Any]:
    async with serving() as (app, conns):
        for i in range(0, nodes, CONNECTIONS):
            await conns.round([_request(b"/api/v1/nodes", {
                "name": f"n{j:04d}", "resources": {"cpu": "1000000", "memory": "100Pi"},
                "labels": {"facility": f"f{j % 4}"}})
                for j in range(i, min(i + CONNECTIONS, nodes))])
        grant = _request(b"/api/v1/allocations", GRANT)
        for _ in range(50):  # warm-up
            await conns.round([grant] * CONNECTIONS)
        for protocol in conns.protocols:
            protocol.transport.writes.clear()
        services = app.state.ctx
        for task in [*services._tasks, *services._leading]:
            task.cancel()
        await asyncio.sleep(0.05)
        commits = services.uow.commits
        _instrument("on")
        cpu, loop_cpu = time.process_time(), time.thread_time()
        for _ in range(rounds):
            await conns.round([grant] * CONNECTIONS)
        cpu, loop_cpu = time.process_time() - cpu, time.thread_time() - loop_cpu
        _instrument("off")
        batches = services.uow.commits[0] - commits[0]
        n = rounds * CONNECTIONS
        return {"grants": n, "loop_cpu_us": round(loop_cpu / n * 1e6, 1),
                "process_cpu_us": round(cpu / n * 1e6, 1), "batches": batches,
                "statuses": conns.statuses()}


def _instrument(state: str) -> None:
    """Under callgrind with ``--instr-atstart=no``, count only the measured
    rounds (BENCH_CALLGRIND=1)."""
    if os.environ.get("BENCH_CALLGRIND"):
        subprocess.run(["callgrind_control", "-i", state, str(os.getpid())], check=True,
                       capture_output=True)


def in_process(measure: Coroutine[Any, Any, dict[str, Any]], **env: str) -> dict[str, Any]:
    """Run ``measure`` on uvloop with a server's settings in the environment
    (a data directory of its own, the admin token, and ``env``)."""
    import uvloop

    with tempfile.TemporaryDirectory() as tmp:
        os.environ.update({"APPORTION_DATA_DIR": tmp, "APPORTION_ADMIN_TOKEN": TOKEN,
                           "APPORTION_LOG_LEVEL": "WARNING", **env})
        return uvloop.run(measure)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--nodes", type=int, default=1000)
    args = parser.parse_args()
    # A long leader timeout: under valgrind the lock's check would time out
    # and depose the server before its loops are stopped.
    figures = in_process(_measure(args.rounds, args.nodes), APPORTION_LEADER_TIMEOUT="600")
    print(f"loop cpu={figures['loop_cpu_us']} us/grant  process cpu="
          f"{figures['process_cpu_us']} us/grant  batches={figures['batches']}  "
          f"statuses={figures['statuses']}")
    write_result("grant_loop", figures)


if __name__ == "__main__":
    main()
