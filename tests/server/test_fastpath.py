"""The grant fast path's answer on uvicorn: its head and body leave in one
write (two writes were two segments on loopback and two wake-ups of the
client), and uvicorn's own bookkeeping of the response still runs."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from apportion.core.resources import format_vector
from apportion.exceptions import BodyTooLarge
from apportion.server.fastpath import _respond, read_body
from apportion.server.schemas import _format_granted


class _Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


class _Flow:
    write_paused = False
    resumed = 0

    def resume_reading(self) -> None:
        self.resumed += 1


def _cycle(transport: _Transport, *, keep_alive: bool = True, expect_100: bool = False,
           method: str = "POST") -> tuple[RequestResponseCycle, list[bool]]:
    done: list[bool] = []
    scope: Any = {"type": "http", "method": method, "path": "/api/v1/allocations",
                  "http_version": "1.1", "headers": []}
    cycle = RequestResponseCycle(
        scope, transport, _Flow(),  # type: ignore[arg-type]
        logging.getLogger("t"),
        logging.getLogger("t"), False, [(b"server", b"uvicorn")], asyncio.Event(), expect_100,
        keep_alive, lambda: done.append(True))
    return cycle, done


def _arrived(cycle: RequestResponseCycle, body: bytes, *, whole: bool) -> None:
    """What uvicorn's protocol does as ``body`` comes in (all of it: ``whole``)."""
    cycle.body += body
    cycle.more_body = not whole
    cycle.message_event.set()


@given(body=st.binary(max_size=2048), limit=st.integers(min_value=0, max_value=4096),
       expect_100=st.booleans())
def test_a_body_already_in_is_taken_as_uvicorns_receive_hands_it_over(
        body: bytes, limit: int, expect_100: bool) -> None:
    def read(take: bool) -> tuple[object, bytes, bool, list[bytes], int]:
        transport = _Transport()
        cycle, _ = _cycle(transport, expect_100=expect_100)
        _arrived(cycle, body, whole=True)

        async def go() -> object:
            try:
                if take:
                    return await read_body(cycle.receive, limit)
                return (await cycle.receive())["body"]  # type: ignore[typeddict-item]
            except BodyTooLarge as exc:
                return exc.message
        got = asyncio.run(go())
        flow = cycle.flow
        assert isinstance(flow, _Flow)
        return got, bytes(cycle.body), cycle.message_event.is_set(), transport.writes, \
            flow.resumed

    got, left, event_set, writes, resumed = read(True)
    expected, *rest = read(False)
    if expected == body and len(body) > limit:
        expected = f"the body is over {limit} bytes, the most this endpoint takes"
    assert (got, left, event_set, writes, resumed) == (expected, *rest)


def test_a_body_still_coming_is_received_in_parts() -> None:
    cycle, _ = _cycle(_Transport())
    _arrived(cycle, b'{"resources":', whole=False)

    async def go() -> bytes:
        reading = asyncio.ensure_future(read_body(cycle.receive, 1 << 20))
        while cycle.body:  # until the reader has taken the first part
            await asyncio.sleep(0)
        _arrived(cycle, b' {"cpu": 1}}', whole=True)
        return await reading

    assert asyncio.run(go()) == b'{"resources": {"cpu": 1}}'


@pytest.mark.parametrize("keep_alive", [True, False])
def test_the_head_and_body_are_written_once_and_uvicorn_completes_the_response(
        keep_alive: bool) -> None:
    transport = _Transport()
    cycle, done = _cycle(transport, keep_alive=keep_alive)
    asyncio.run(_respond(cycle.send, 201, b'{"id":"a"}', "rid"))
    assert len(transport.writes) == 1
    head, _, body = transport.writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 201 Created\r\n")
    assert b"content-length: 10" in head and b"x-request-id: rid" in head
    assert body == b'{"id":"a"}'
    assert cycle.transport is transport and cycle.response_complete and done == [True]
    assert transport.closed is not keep_alive


class _PausedThenShutDown(_Flow):
    """A socket whose buffer is full; while the answer waits for it, the
    server shuts down, which turns the cycle's keep-alive off."""

    write_paused = True

    def __init__(self, cycle: RequestResponseCycle | None = None) -> None:
        self.cycle = cycle

    async def drain(self) -> None:
        assert self.cycle is not None
        self.cycle.keep_alive = False
        self.write_paused = False


def test_a_head_is_made_after_the_wait_for_the_socket() -> None:
    """As uvicorn's send: a shutdown during the wait closes the connection
    and the head says so."""
    transport = _Transport()
    cycle, done = _cycle(transport, keep_alive=True)
    cycle.flow = _PausedThenShutDown(cycle)  # type: ignore[assignment]
    asyncio.run(_respond(cycle.send, 201, b"{}", "rid"))
    assert len(transport.writes) == 1
    assert b"connection: close\r\n" in transport.writes[0]
    assert transport.closed and done == [True]


def test_another_send_gets_the_two_messages_as_they_are() -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    asyncio.run(_respond(send, 409, b"{}", "rid"))
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 409 and sent[1]["body"] == b"{}"


def _by_uvicorn(status: int, body: bytes, request_id: str,
                headers: list[tuple[bytes, bytes]], keep_alive: bool,
                defaults: list[tuple[bytes, bytes]], method: str) -> tuple[list[bytes], bool]:
    """What uvicorn's own send writes for the fast path's two messages."""
    transport = _Transport()
    cycle, _ = _cycle(transport, keep_alive=keep_alive, method=method)
    cycle.default_headers = defaults

    async def both() -> None:
        await cycle.send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()), *headers,
            (b"x-request-id", request_id.encode())]})
        await cycle.send({"type": "http.response.body", "body": body})

    asyncio.run(both())
    return transport.writes, transport.closed


_NAMES = st.sampled_from([b"retry-after", b"Location", b"x-thing", b"bad name", b"connection",
                          b"Content-Length", b"transfer-encoding", b"date", b"server"])
_VALUES = st.sampled_from([b"1", b"close", b"chunked", b"/api/v1/jobs/j1", b"bad\nvalue",
                           b"uvicorn", b"Mon, 07 Dec 2026 12:00:00 GMT", b""])


@given(status=st.sampled_from([200, 201, 400, 401, 404, 409, 413, 422, 429, 500, 503]),
       body=st.binary(max_size=64),
       request_id=st.from_regex(r"\A[A-Za-z0-9._:-]{1,64}\Z"),
       headers=st.lists(st.tuples(_NAMES, _VALUES), max_size=2),
       defaults=st.lists(st.tuples(_NAMES, _VALUES), max_size=3),
       keep_alive=st.booleans(), method=st.sampled_from(["POST", "GET", "HEAD"]))
def test_one_write_holds_the_bytes_uvicorn_writes(
        status: int, body: bytes, request_id: str, headers: list[tuple[bytes, bytes]],
        defaults: list[tuple[bytes, bytes]], keep_alive: bool, method: str) -> None:
    """Written at once by the fast path, or (headers uvicorn would refuse or
    act on) by uvicorn's send itself: the same bytes either way, and the
    same refusals."""
    try:
        expected, closed = _by_uvicorn(status, body, request_id, headers, keep_alive, defaults,
                                       method)
    except (RuntimeError, ValueError) as exc:
        expected, closed = [repr(exc).encode()], False
    transport = _Transport()
    cycle, done = _cycle(transport, keep_alive=keep_alive, method=method)
    cycle.default_headers = defaults
    try:
        asyncio.run(_respond(cycle.send, status, body, request_id, headers))
    except (RuntimeError, ValueError) as exc:
        transport.writes, done = [repr(exc).encode()], [True]
    assert b"".join(transport.writes) == b"".join(expected)
    assert transport.closed is closed and done == [True]
    if method != "HEAD" and all(_plain(name, value) for name, value in headers + defaults):
        assert len(transport.writes) == 1  # where uvicorn writes two


def _plain(name: bytes, value: bytes) -> bool:
    """A header uvicorn neither refuses nor acts on."""
    return (name.lower() not in (b"content-length", b"transfer-encoding", b"connection")
            and b" " not in name and b"\n" not in value)


@given(st.dictionaries(st.sampled_from(["cpu", "memory", "gpu", "storage", "fpga"]),
                       st.integers(min_value=1, max_value=2**62), min_size=1))
def test_a_granted_vector_is_rendered_as_format_vector_renders_it(vector: dict[str, int]
                                                                   ) -> None:
    first = _format_granted(vector)
    assert first == format_vector(vector)
    first["cpu"] = "changed"  # each answer is its own dict
    assert _format_granted(vector) == format_vector(vector)
