"""The agent's client: the calls ``client.Api`` defines once, over httpx,
with the sync client's errors, across the agent's failover transport."""

from __future__ import annotations

import asyncio
import http.server
import importlib.abc
import importlib.machinery
import importlib.util
import json
import sys
import threading

import httpx
import pytest

from apportion.agent.transport import FailoverTransport, parse_servers
from apportion.async_client import (
    AsyncClient,
    ClientError,
    ConnectError,
    remember_missing_sniffio,
)
from apportion.protocol import DesiredState, TaskUpdate


def test_the_agent_calls_go_where_the_server_listens() -> None:
    seen: list[tuple[str, str, bytes]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, str(request.url), request.content))
        if request.url.path.endswith("/assignments"):
            return httpx.Response(200, json={"epoch": "e", "seq": 3, "node_state": "ready",
                                             "rescan": 0, "tasks": []})
        return httpx.Response(200, json={"ok": True})

    async def scenario() -> DesiredState:
        client = AsyncClient("http://s:1", "tok", transport=httpx.MockTransport(answer))
        state: DesiredState = await client.agent_assignments("n1", after=-1, wait=20.0)
        await client.report_task("n1", "t1", TaskUpdate("running", {"started_at": 1.0}))
        await client.push_log("n1", "t1", "stdout", 5, b"hi")
        await client.agent_heartbeat("n1", "a1", {}, [])
        await client.aclose()
        return state

    assert asyncio.run(scenario()) == DesiredState("e", 3, "ready", 0, ())
    assert [(m, u) for m, u, _ in seen] == [
        ("GET", "http://s:1/api/v1/agents/n1/assignments?after=-1&wait=20.0"),
        ("POST", "http://s:1/api/v1/agents/n1/tasks/t1/report"),
        ("POST", "http://s:1/api/v1/agents/n1/tasks/t1/logs/stdout?offset=5"),
        ("POST", "http://s:1/api/v1/agents/n1/heartbeat")]
    assert json.loads(seen[1][2]) == {"state": "running", "times": {"started_at": 1.0}}
    assert seen[2][2] == b"hi"


def test_an_error_answer_is_a_client_error_and_no_answer_a_connect_error() -> None:
    def conflict(request: httpx.Request) -> httpx.Response:
        return httpx.Response(409, json={"error": "epoch", "message": "stale"})

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async def scenario() -> None:
        client = AsyncClient("http://s", None, transport=httpx.MockTransport(conflict))
        with pytest.raises(ClientError) as err:
            await client.agent_heartbeat("n1", "a1", {}, [])
        assert (err.value.status, str(err.value)) == (409, "stale")
        client = AsyncClient("http://s", None, transport=httpx.MockTransport(down))
        with pytest.raises(ConnectError):
            await client.agent_heartbeat("n1", "a1", {}, [])

    asyncio.run(scenario())


def test_the_failover_transport_carries_the_client_to_the_next_server() -> None:
    hosts: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        hosts.append(request.url.host)
        if request.url.host == "a":
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json={"registered": True})

    async def scenario() -> object:
        servers = parse_servers("http://a:1,http://b:2")
        failover = FailoverTransport(servers, httpx.MockTransport(answer))
        client = AsyncClient(str(servers[0]), "tok", transport=failover)
        first = await client.agent_heartbeat("n1", "a1", {}, [])
        await client.agent_heartbeat("n1", "a1", {}, [])
        return first

    assert asyncio.run(scenario()) == {"registered": True}
    assert hosts == ["a", "b", "b"]


class _Recorder(importlib.abc.MetaPathFinder):
    """Notes every module looked for on ``sys.path`` (finds none itself)."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> None:
        self.asked.append(fullname)


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.mark.skipif(importlib.util.find_spec("sniffio") is not None
                    and sys.modules.get("sniffio", 0) is not None,
                    reason="sniffio is installed here")
def test_requests_over_loopback_no_longer_search_the_path_for_sniffio() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    recorder = _Recorder()
    sys.meta_path.insert(0, recorder)

    async def scenario() -> list[object]:
        client = AsyncClient(f"http://127.0.0.1:{server.server_address[1]}", "tok")
        answers = [await client.agent_heartbeat("n1", "a1", {}, []) for _ in range(5)]
        await client.aclose()
        return answers

    try:
        assert asyncio.run(scenario()) == [{"ok": True}] * 5
    finally:
        sys.meta_path.remove(recorder)
        server.shutdown()
        server.server_close()
    assert "sniffio" not in recorder.asked
    assert sys.modules["sniffio"] is None


def test_an_installed_sniffio_is_left_to_be_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    class Offers(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname: str, path: object = None,
                      target: object = None) -> importlib.machinery.ModuleSpec | None:
            return importlib.machinery.ModuleSpec(fullname, None) if fullname == "sniffio" \
                else None

    monkeypatch.delitem(sys.modules, "sniffio", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Offers(), *sys.meta_path])
    assert remember_missing_sniffio() is False
    assert "sniffio" not in sys.modules
    monkeypatch.setattr(sys, "meta_path", [f for f in sys.meta_path if not isinstance(f, Offers)])
    if importlib.util.find_spec("sniffio") is None:
        assert remember_missing_sniffio() is True
        assert sys.modules["sniffio"] is None
        assert remember_missing_sniffio() is True  # asked again: the entry answers
