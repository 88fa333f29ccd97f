"""Leadership: one holder of the lock at a time, each election a new epoch,
and a deposed leader's late write refused by the database (``Tx.fence``)."""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa

from apportion.exceptions import NotLeader
from apportion.service.leadership import Leadership, leader_lock_for
from apportion.service.unit_of_work import Tx


def _server(engine: sa.Engine, name: str) -> Leadership:
    return Leadership(engine, leader_lock_for(engine, 2.0), server_id=name,
                      url=f"http://{name}", timeout_s=2.0)


async def _until_leader(server: Leadership) -> None:
    for _ in range(600):
        await server.campaign_round()
        if server.is_leader:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{server.server_id} never won the lock")


def _fence(engine: sa.Engine, epoch: int) -> None:
    with engine.begin() as conn:
        Tx(conn, lambda c, events: None, 0.0).fence(epoch)


def test_one_leader_at_a_time_and_a_deposed_leader_is_fenced(engine: sa.Engine) -> None:
    async def scenario() -> None:
        a, b = _server(engine, "a"), _server(engine, "b")
        await a.campaign_round()
        await b.campaign_round()
        assert (a.epoch, b.epoch) == (1, None)
        _fence(engine, 1)  # the leader's write passes
        view = b.cluster()
        assert view["leader"] == {"server_id": "a", "epoch": 1, "since": a.since}
        assert sorted((s["id"], s["alive"], s["leader"]) for s in view["servers"]) == [
            ("a", True, True), ("b", True, False)]
        # a's lock goes (its process died, its connection closed) while a
        # still believes it leads: b takes over with a new epoch ...
        await asyncio.to_thread(a.lock.release)
        await _until_leader(b)  # PostgreSQL frees the lock as the session ends
        assert b.epoch == 2
        # ... and a's late write, still carrying epoch 1, is refused.
        with pytest.raises(NotLeader, match="leader epoch 1 was superseded by 2"):
            _fence(engine, 1)
        _fence(engine, 2)
        # a notices at its next round and steps down.
        await a.campaign_round()
        assert a.epoch is None and not a.is_leader
        await b.stop()
        await _until_leader(a)
        assert a.epoch == 3
        await a.stop()

    asyncio.run(scenario())


def test_a_leader_that_cannot_confirm_its_lock_steps_down(engine: sa.Engine) -> None:
    async def scenario() -> None:
        a = _server(engine, "a")
        await a.campaign_round()
        changes: list[int | None] = []

        async def note(epoch: int | None) -> None:
            changes.append(epoch)

        a.listeners.append(note)
        a.lock.still_held = lambda: False  # type: ignore[method-assign]
        await a.campaign_round()
        assert (a.is_leader, changes) == (False, [None])
        await a.stop()

    asyncio.run(scenario())
