"""The event stream (``service/events_stream.py``): one tail of the event log
per server, its listeners called once per event in order (a broken one
does not stop the rest), and followers that each keep their own cursor,
reading from memory or, when further behind than memory reaches, from the
store, so that a follower resuming after an id sees every later event once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from apportion.core.records import Event
from apportion.service.events_stream import EventHub, event_dict
from apportion.service.wiring import Services


async def _write(s: Services, *subjects: str) -> None:
    for subject in subjects:
        await s.uow.write(lambda conn, subject=subject: s.uow.event(conn, "test.step", subject, {}))


async def _take(stream: AsyncIterator[Event | None], n: int) -> list[str]:
    out = []
    while len(out) < n:
        event = await asyncio.wait_for(anext(stream), timeout=30)
        if event is not None:
            out.append(event.subject)
    return out


def test_listeners_hear_each_event_once_in_order(services: Services) -> None:
    hub = EventHub(services.uow.engine)  # as wiring builds it
    hub.start_at_end()
    heard: list[str] = []

    def broken(event: Event) -> None:
        raise RuntimeError("a listener with a bug")

    hub.listeners += [broken, lambda e: heard.append(e.subject)]

    async def scenario() -> None:
        await _write(services, "a", "b")
        assert await hub.poll() == 2
        assert await hub.poll() == 0
        await _write(services, "c")
        assert await hub.poll() == 1

    asyncio.run(scenario())
    assert heard == ["a", "b", "c"]
    assert hub.last_id == 3


def test_a_follower_behind_memory_reads_the_store_then_memory_then_waits(
    services: Services,
) -> None:
    hub = EventHub(services.uow.engine, keep=3)
    hub.start_at_end()

    async def scenario() -> None:
        await _write(services, *"abcdef")
        assert await hub.poll() == 6
        assert [e.subject for e in hub.recent] == ["d", "e", "f"]  # memory keeps three
        # From the start: a, b and c come from the store, the rest from memory.
        stream = hub.follow(0)
        assert await _take(stream, 6) == list("abcdef")
        assert hub.followers == 1
        # Resuming after an id (an SSE client's Last-Event-ID) sees what follows.
        resumed = hub.follow(4)
        assert await _take(resumed, 2) == ["e", "f"]
        # Caught up: both wait for the next event the tail reads.
        later = asyncio.ensure_future(_take(stream, 1))
        await _write(services, "g")
        await hub.poll()
        assert await later == ["g"]
        assert await _take(resumed, 1) == ["g"]
        await stream.aclose()
        await resumed.aclose()
        assert hub.followers == 0

    asyncio.run(scenario())


def test_an_idle_follower_is_sent_keep_alives(services: Services) -> None:
    hub = EventHub(services.uow.engine)
    hub.start_at_end()

    async def scenario() -> None:
        stream = hub.follow(idle_s=0.01)
        assert await asyncio.wait_for(anext(stream), timeout=30) is None
        await _write(services, "x")
        await hub.poll()
        event = await asyncio.wait_for(anext(stream), timeout=30)
        assert event is not None
        assert event_dict(event) == {
            "id": 1,
            "kind": "test.step",
            "subject": "x",
            "origin": services.uow.origin,
            "at": event.at,
            "data": {},
        }
        await stream.aclose()

    asyncio.run(scenario())
