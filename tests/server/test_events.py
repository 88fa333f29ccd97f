"""The event stream against a real server: every state change as server-sent
events, in order, resumable with ``Last-Event-ID``; ``apportion events -f``;
and publishing to the NATS JetStream on this machine (127.0.0.1:4222)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from support import ServerProcess, need_service

NATS_URL = os.environ.get("APPORTION_TEST_NATS", "nats://127.0.0.1:4222")


def read_events(server: ServerProcess, count: int, *, headers: dict[str, str] | None = None,
                timeout: float = 10.0, **params: Any) -> list[dict[str, Any]]:
    """The first ``count`` events of a stream (fewer if it ends first)."""
    got: list[dict[str, Any]] = []
    ids: list[str] = []
    deadline = time.monotonic() + timeout
    with httpx.stream("GET", server.url + "/api/v1/events", params=params,
                      headers={**server.headers, **(headers or {})},
                      timeout=httpx.Timeout(timeout, read=timeout)) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("id: "):
                ids.append(line[4:])
            elif line.startswith("data: "):
                got.append(json.loads(line[6:]))
                if len(got) >= count or time.monotonic() > deadline:
                    break
    assert [str(e["id"]) for e in got] == ids[:len(got)]
    return got


class Follower:
    """Reads a stream from now on in a thread; ``get`` waits for the next event.

    A plain HTTP/1.0 socket, so ``close`` can end the read at once (the
    server then sees the client go, as it does when a browser tab closes)."""

    def __init__(self, server: ServerProcess) -> None:
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        self.sock.sendall((f"GET /api/v1/events HTTP/1.0\r\nHost: 127.0.0.1\r\n"
                           f"Authorization: Bearer {server.token}\r\n\r\n").encode())
        self.lines = self.sock.makefile("rb")
        status = self.lines.readline()
        assert b" 200 " in status, status
        self.sock.settimeout(None)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for raw in self.lines:
                line = raw.decode().rstrip("\r\n")
                if line.startswith("data: "):
                    self.events.put(json.loads(line[6:]))
        except (OSError, ValueError):
            return  # closed by ``close``

    def get(self, timeout: float = 5.0) -> dict[str, Any]:
        return self.events.get(timeout=timeout)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.thread.join(5)
        self.lines.close()
        self.sock.close()


@pytest.fixture
def api(fresh_api: httpx.Client) -> httpx.Client:
    """A server of the test's own (``conftest.py``): these tests count all it holds."""
    return fresh_api


def _changes(api: httpx.Client) -> str:
    """Register two nodes, grant and release, submit a lease job; returns its id."""
    for name in ("n1", "n2"):
        node = {"name": name, "resources": {"cpu": "4", "memory": "8Gi"}}
        assert api.post("/api/v1/nodes", json=node).status_code == 201
    alloc = api.post("/api/v1/allocations", json={"resources": {"cpu": "1"}, "node": "n1"})
    assert alloc.status_code == 201
    assert api.delete(f"/api/v1/allocations/{alloc.json()['id']}",
                      params={"reason": "completed"}).status_code == 200
    job = api.post("/api/v1/jobs", json={"resources": {"cpu": "2"}}).json()
    return str(job["id"])


def test_the_stream_replays_in_order_and_resumes_after_last_event_id(
    server: ServerProcess, api: httpx.Client
) -> None:
    job = _changes(api)
    everything = read_events(server, 7, after=0)
    kinds = [e["kind"] for e in everything]
    assert kinds == ["node.registered", "node.registered", "allocation.granted",
                     "allocation.released", "job.submitted", "allocation.granted", "job.placed"]
    assert [e["id"] for e in everything] == sorted(e["id"] for e in everything)
    assert everything[3]["data"]["reason"] == "completed"
    assert everything[6]["subject"] == job and everything[6]["data"]["state"] == "running"

    # A reconnecting client sends the last id it saw and gets exactly the rest.
    third = everything[2]["id"]
    rest = read_events(server, 4, headers={"Last-Event-ID": str(third)})
    assert [e["id"] for e in rest] == [e["id"] for e in everything[3:]]

    # follow=false ends at the newest event; kinds filter by prefix.
    ended = read_events(server, 100, after=0, follow="false", kind="job,allocation.released")
    assert [e["kind"] for e in ended] == ["allocation.released", "job.submitted", "job.placed"]
    assert read_events(server, 100, tail=2, follow="false") == everything[-2:]


def test_new_changes_arrive_live(server: ServerProcess, api: httpx.Client) -> None:
    follower = Follower(server)
    try:
        node = {"name": "live-1", "resources": {"cpu": "2"}}
        started = time.monotonic()
        assert api.post("/api/v1/nodes", json=node).status_code == 201
        event = follower.get()
        assert (event["kind"], event["subject"]) == ("node.registered", "live-1")
        assert time.monotonic() - started < 2.0
        assert api.post("/api/v1/nodes/live-1/cordon").status_code == 200
        event = follower.get()
        assert (event["kind"], event["data"]["state"]) == ("node.updated", "cordoned")
    finally:
        follower.close()


def test_the_stream_needs_a_token_and_a_sane_last_event_id(server: ServerProcess) -> None:
    assert httpx.get(server.url + "/api/v1/events").status_code == 401
    assert httpx.get(server.url + "/api/v1/events", params={"token": server.token}
                     ).status_code == 401  # the token is taken from the header only
    bad = httpx.get(server.url + "/api/v1/events",
                    headers={**server.headers, "Last-Event-ID": "yesterday"})
    assert bad.status_code == 422
    assert "Last-Event-ID" in bad.json()["message"]


def test_cli_events_follow_prints_changes(server: ServerProcess, api: httpx.Client) -> None:
    env = {**os.environ, "APPORTION_SERVER": server.url, "APPORTION_TOKEN": server.token}
    proc = subprocess.Popen(
        [sys.executable, "-m", "apportion.cli.main", "events", "-f", "--json", "--tail", "0"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        lines: queue.Queue[str] = queue.Queue()

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line)

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + 15
        seen: list[dict[str, Any]] = []
        n = 0
        while time.monotonic() < deadline and not seen:
            # The command may still be starting: keep making changes until one shows.
            n += 1
            api.post("/api/v1/nodes", json={"name": f"cli-{n}", "resources": {"cpu": "1"}})
            try:
                seen.append(json.loads(lines.get(timeout=1.0)))
            except queue.Empty:
                continue
        assert seen, "apportion events -f printed nothing"
        assert seen[0]["kind"] == "node.registered"
        assert seen[0]["subject"].startswith("cli-")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# -- NATS JetStream -----------------------------------------------------------------------


async def _nats() -> Any:
    nats = pytest.importorskip("nats")
    try:
        return await nats.connect(NATS_URL, connect_timeout=2, max_reconnect_attempts=0,
                                  allow_reconnect=False)
    except Exception as exc:
        need_service("NATS", f"{NATS_URL}: {exc!r}")


async def _create_stream(name: str) -> None:
    nc = await _nats()
    try:
        js = nc.jetstream()
        try:
            streams = await js.streams_info()
        except Exception as exc:
            need_service("NATS JetStream", f"{NATS_URL} (-js?): {exc!r}")
        for info in streams:
            # A stream left by an interrupted run of this test would overlap.
            subjects = info.config.subjects or []
            if info.config.name.startswith("APPORTION_TEST_") and any(
                    s.startswith("apportion.events") for s in subjects):
                await js.delete_stream(info.config.name)
        await js.add_stream(name=name, subjects=["apportion.events.>"])
    finally:
        await nc.close()


async def _fetch(name: str, count: int, timeout: float) -> list[Any]:
    nc = await _nats()
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe("apportion.events.>", stream=name)
        got: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            try:
                got.extend(await sub.fetch(count - len(got), timeout=1.0))
            except Exception:  # nats.errors.TimeoutError: nothing yet
                continue
        for msg in got:
            await msg.ack()
        return got
    finally:
        await nc.close()


async def _delete_stream(name: str) -> None:
    nc = await _nats()
    try:
        await nc.jetstream().delete_stream(name)
    finally:
        await nc.close()


def test_events_are_published_to_jetstream(tmp_path: Path) -> None:
    stream = f"APPORTION_TEST_{uuid.uuid4().hex[:10].upper()}"
    asyncio.run(_create_stream(stream))
    proc = ServerProcess(tmp_path, extra_env={"APPORTION_NATS_URL": NATS_URL}).start()
    try:
        with proc.client() as api:
            job = _changes(api)
        sent = read_events(proc, 7, after=0)
        messages = asyncio.run(_fetch(stream, 7, timeout=15))
        assert [m.subject for m in messages] == [f"apportion.events.{e['kind']}" for e in sent]
        payloads = [json.loads(m.data) for m in messages]
        assert payloads == sent
        assert [m.headers["Nats-Msg-Id"] for m in messages] == [str(e["id"]) for e in sent]
        assert payloads[-1]["subject"] == job
    finally:
        proc.stop()
        asyncio.run(_delete_stream(stream))
