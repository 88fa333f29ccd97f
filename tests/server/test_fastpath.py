"""The grant fast path's answer on uvicorn: its head and body leave in one
write (two writes were two segments on loopback and two wake-ups of the
client), and uvicorn's own bookkeeping of the response still runs."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from apportion.core.resources import format_vector
from apportion.server.fastpath import _JoinedWrites, _respond
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


def _cycle(transport: _Transport, *, keep_alive: bool = True) -> tuple[RequestResponseCycle,
                                                                        list[bool]]:
    done: list[bool] = []
    scope: Any = {"type": "http", "method": "POST", "path": "/api/v1/allocations",
                  "http_version": "1.1", "headers": []}
    cycle = RequestResponseCycle(
        scope, transport, SimpleNamespace(write_paused=False),  # type: ignore[arg-type]
        logging.getLogger("t"),
        logging.getLogger("t"), False, [(b"server", b"uvicorn")], asyncio.Event(), False,
        keep_alive, lambda: done.append(True))
    return cycle, done


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


def test_another_send_gets_the_two_messages_as_they_are() -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    asyncio.run(_respond(send, 409, b"{}", "rid"))
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 409 and sent[1]["body"] == b"{}"


def test_a_head_sent_alone_is_still_written() -> None:
    transport = _Transport()
    joined = _JoinedWrites(transport)
    joined.write(b"head")
    joined.flush()
    assert transport.writes == [b"head"]
    joined.close()
    assert transport.writes == [b"head"] and transport.closed


@given(st.dictionaries(st.sampled_from(["cpu", "memory", "gpu", "storage", "fpga"]),
                       st.integers(min_value=1, max_value=2**62), min_size=1))
def test_a_granted_vector_is_rendered_as_format_vector_renders_it(vector: dict[str, int]
                                                                   ) -> None:
    first = _format_granted(vector)
    assert first == format_vector(vector)
    first["cpu"] = "changed"  # each answer is its own dict
    assert _format_granted(vector) == format_vector(vector)
