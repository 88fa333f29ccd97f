"""The agent's client: the calls ``client.Api`` defines once, over httpx,
with the sync client's errors, across the agent's failover transport."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from apportion.agent.transport import FailoverTransport, parse_servers
from apportion.async_client import AsyncClient, ClientError, ConnectError
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
