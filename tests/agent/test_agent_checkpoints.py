"""The agent's checkpoint relay against a stand-in server: a tar the task
wrote is never uploaded, uploads stream from disk under the limit, and a
hostile checkpoint from the server is refused without writing outside."""

from __future__ import annotations

import asyncio
import hashlib
import io
import tracemalloc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from agent.test_agent_runner import WATCHDOG, assignment
from agent.test_checkpoint import cve_2025_4517_tar
from apportion.agent import checkpoint
from apportion.agent.main import Agent, AgentConfig
from apportion.agent.runner import LocalTask, Runner
from apportion.async_client import AsyncClient
from apportion.protocol import TaskUpdate

Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]


@dataclass
class Server(httpx.AsyncBaseTransport):
    """Answers with ``handler``; records each request without keeping bodies."""

    handler: Handler
    seen: list[tuple[str, str, dict[str, str], int, str]] = field(default_factory=list)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        size, digest = 0, hashlib.sha256()
        async for chunk in request.stream:  # type: ignore[union-attr]
            size += len(chunk)
            digest.update(chunk)
        self.seen.append((request.method, request.url.path, dict(request.headers), size,
                          digest.hexdigest()))
        return await self.handler(request)


def agent_with(tmp_path: Path, handler: Handler, limit: int = 1 << 30) -> tuple[Agent, Server]:
    config = AgentConfig("http://server", "t0ken", "n1", tmp_path / "work", fence=False,
                         checkpoint_max=limit)
    agent = Agent(config, nvml=None)
    server = Server(handler)
    agent.client = AsyncClient("http://server", "t0ken", transport=server)
    agent.runner = Runner(config.work_dir, "n1", WATCHDOG, lambda task: None)
    return agent, server


async def ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={})


def prepared(agent: Agent, task_id: str = "t1") -> LocalTask:
    assert agent.runner is not None
    return agent.runner.prepare(assignment(["true"], task_id=task_id))


def test_a_tar_the_task_wrote_is_never_uploaded_only_what_the_agent_packed(
    tmp_path: Path
) -> None:
    uploaded: list[bytes] = []

    async def keep(request: httpx.Request) -> httpx.Response:
        uploaded.append(request.content if request.method == "PUT" else b"")
        return httpx.Response(200, json={})

    async def scenario() -> bool:
        agent, server = agent_with(tmp_path, ok)
        task = prepared(agent)
        cve_2025_4517_tar(task.home / "checkpoint.tar")  # where it used to be taken from
        (task.checkpoint_dir / "counter").write_text("17")
        done = await agent._upload_checkpoint(task.id, TaskUpdate("exited", exit_code=1))
        method, path, headers, size, digest = server.seen[0]
        assert (method, path) == ("PUT", "/api/v1/agents/n1/tasks/t1/checkpoint")
        assert headers["content-length"] == str(size) and "transfer-encoding" not in headers
        body = _refetch(agent, task, digest)
        assert [m.parts for m, _ in checkpoint.members(io.BytesIO(body), 1 << 20)] \
            == [("counter",)]
        return done

    assert asyncio.run(scenario())
    assert sorted(p.name for p in (tmp_path / "work" / "tasks" / "t1").iterdir()) \
        == ["task.json"]  # the packed tar is gone once sent


def _refetch(agent: Agent, task: LocalTask, digest: str) -> bytes:
    """The upload's bytes, packed again the same way (the stand-in server
    keeps only their digest)."""
    assert agent.runner is not None
    packed = agent.runner.pack_checkpoint(task, 1 << 20)
    assert packed is not None
    body = packed.path.read_bytes()
    packed.path.unlink()
    assert hashlib.sha256(body).hexdigest() == digest
    return body


def test_an_upload_streams_from_disk_and_never_holds_the_checkpoint_in_memory(
    tmp_path: Path
) -> None:
    """Issue 17 finding 6: a 400 MB checkpoint raised the agent's memory by
    400 MB. 64 MiB here; Python allocations during pack and upload stay
    under 8 MiB."""
    async def scenario() -> tuple[bool, int, int]:
        agent, server = agent_with(tmp_path, ok)
        task = prepared(agent)
        with (task.checkpoint_dir / "state.bin").open("wb") as fh:
            for _ in range(64):
                fh.write(b"\x5a" * (1 << 20))
        tracemalloc.start()
        try:
            done = await agent._upload_checkpoint(
                task.id, TaskUpdate("exited", exit_code=1, signalled=True))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        return done, peak, server.seen[0][3]

    done, peak, size = asyncio.run(scenario())
    assert done
    assert size == 512 + (64 << 20) + 1024  # a header, the data, the end of the archive
    assert peak < 8 << 20, f"{peak} bytes allocated while uploading {size}"


def test_a_checkpoint_over_the_limit_is_not_packed_and_one_the_server_refuses_is_dropped(
    tmp_path: Path
) -> None:
    async def too_large(request: httpx.Request) -> httpx.Response:
        return httpx.Response(413, json={"error": "body_too_large"})

    async def scenario() -> tuple[bool, bool, int]:
        agent, server = agent_with(tmp_path / "a", ok, limit=4096)
        task = prepared(agent)
        (task.checkpoint_dir / "big").write_bytes(b"x" * 8000)
        local = await agent._upload_checkpoint(task.id, TaskUpdate("exited", exit_code=1))
        agent2, server2 = agent_with(tmp_path / "b", too_large)
        task2 = prepared(agent2)
        (task2.checkpoint_dir / "big").write_bytes(b"x" * 8000)
        remote = await agent2._upload_checkpoint(task2.id, TaskUpdate("exited", exit_code=1))
        return local, remote, len(server.seen) * 10 + len(server2.seen)

    assert asyncio.run(scenario()) == (False, False, 1)  # nothing sent; one refused upload
    assert not list(tmp_path.rglob("checkpoint-*.tar"))


def serving(data: bytes, *, length: bool = True) -> Handler:
    async def handler(request: httpx.Request) -> httpx.Response:
        if length:
            return httpx.Response(200, content=data)

        async def parts() -> Any:
            for i in range(0, len(data), 1000):
                yield data[i:i + 1000]

        return httpx.Response(200, content=parts())

    return handler


def test_a_hostile_checkpoint_from_the_server_is_refused_once_and_writes_nothing_outside(
    tmp_path: Path
) -> None:
    poc = tmp_path / "poc.tar"
    cve_2025_4517_tar(poc)

    async def scenario() -> tuple[bool, LocalTask, int]:
        agent, server = agent_with(tmp_path, serving(poc.read_bytes()))
        task = prepared(agent)
        resumed = await agent._fetch_checkpoint(task, "t0")
        return resumed, task, len(server.seen)

    resumed, task, requests = asyncio.run(scenario())
    assert (resumed, requests) == (False, 1)  # refused, not retried
    assert sorted(p.name for p in task.home.iterdir()) == ["checkpoint"]
    assert sorted(p.name for p in task.dir.iterdir()) == ["task.json"]
    assert not list(tmp_path.rglob("outside.txt"))


def test_a_download_past_the_limit_stops_whether_or_not_its_length_was_announced(
    tmp_path: Path
) -> None:
    data = b"\0" * 10_000

    async def scenario(length: bool) -> tuple[bool, int]:
        agent, server = agent_with(tmp_path / str(length), serving(data, length=length),
                                   limit=4096)
        task = prepared(agent)
        return await agent._fetch_checkpoint(task, "t0"), len(server.seen)

    assert asyncio.run(scenario(True)) == (False, 1)
    assert asyncio.run(scenario(False)) == (False, 1)
    assert not list(tmp_path.rglob("resume*"))


def test_a_good_checkpoint_is_unpacked_into_the_tasks_resume_directory(tmp_path: Path) -> None:
    source = tmp_path / "saved"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "counter").write_text("41")
    packed = checkpoint.pack(source, tmp_path / "saved.tar", 1 << 20)
    assert packed is not None

    async def scenario() -> tuple[bool, LocalTask]:
        agent, _ = agent_with(tmp_path, serving(packed.path.read_bytes(), length=False))
        task = prepared(agent)
        return await agent._fetch_checkpoint(task, "t0"), task

    resumed, task = asyncio.run(scenario())
    assert resumed
    assert (task.resume_dir / "sub" / "counter").read_text() == "41"
    assert not (task.dir / "resume.tar").exists()
