"""The ledger's use cases (``service/ledger_service.py``): a grant decided in
memory is checked again by the store, so a server whose memory is behind
another's is refused there, reloads the node and places again; a node
cannot shrink below what is allocated on it, even when only the store
knows; deleting a node releases what it held only when forced; memory is
rebuilt from the store at start. Two servers on one store, on SQLite and
PostgreSQL (the store's checks are the dialect's)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace

import pytest

from apportion.core.model import Node, ReleaseReason
from apportion.exceptions import (
    AllocationNotFound,
    CapacityBelowAllocated,
    InsufficientResources,
    NodeExists,
    NodeHasAllocations,
)
from apportion.service.wiring import Services


def test_a_server_whose_memory_is_behind_is_refused_by_the_store_and_places_again(
    servers: Callable[..., Services], store_url: str
) -> None:
    a, b = servers("a", store_url), servers("b", store_url)

    async def scenario() -> None:
        await a.ledger.register_node(Node("n1", {"cpu": 4000}))
        await a.ledger.register_node(Node("n2", {"cpu": 8000}))
        await b.follower.sync()
        assert b.ledger.free("n1") == {"cpu": 4000}
        await a.ledger.grant({"cpu": 3000}, node="n1", owner="alice")  # b has not seen it
        # b's memory picks n1 (the best fit); the store refuses; n1 is
        # reloaded and the grant placed again, on n2.
        placed = await b.ledger.grant({"cpu": 2000}, owner="bob")
        assert placed.node == "n2"
        assert b.ledger.allocated("n1") == {"cpu": 3000}
        await a.ledger.grant({"cpu": 500}, node="n1", owner="alice")
        with pytest.raises(InsufficientResources):  # pinned: nowhere else to go
            await b.ledger.grant({"cpu": 1000}, node="n1", owner="bob")
        assert b.ledger.allocated("n1") == {"cpu": 3500}

    asyncio.run(scenario())


def test_a_node_never_shrinks_below_what_is_allocated_even_when_only_the_store_knows(
    servers: Callable[..., Services], store_url: str
) -> None:
    a, b = servers("a", store_url), servers("b", store_url)

    async def scenario() -> None:
        await a.ledger.register_node(Node("n1", {"cpu": 4000}))
        await b.follower.sync()
        await a.ledger.grant({"cpu": 3000}, node="n1", owner="alice")
        smaller = replace(b.ledger.node("n1"), resources={"cpu": 2000})
        with pytest.raises(CapacityBelowAllocated, match="node n1: capacity is below"):
            await b.ledger.update_node(smaller)
        assert b.ledger.node("n1").resources == {"cpu": 4000}
        assert b.ledger.allocated("n1") == {"cpu": 3000}

    asyncio.run(scenario())


def test_a_node_with_allocations_is_deleted_only_when_forced(services: Services) -> None:
    ledger = services.ledger

    async def scenario() -> None:
        await ledger.register_node(Node("n1", {"cpu": 4000}))
        with pytest.raises(NodeExists, match="node n1 already exists"):
            await ledger.register_node(Node("n1", {"cpu": 8000}))
        held = await ledger.grant({"cpu": 1000}, node="n1", owner="alice")
        with pytest.raises(NodeHasAllocations):
            await ledger.delete_node("n1", force=False)
        [released] = await ledger.delete_node("n1", force=True)
        assert (released.id, released.active) == (held.id, False)
        assert "n1" not in ledger.nodes
        stored = await ledger.get_allocation(held.id)
        assert (stored.active, stored.reason) == (False, released.reason)

    asyncio.run(scenario())


def test_a_release_is_answered_again_and_memory_is_rebuilt_at_start(
    servers: Callable[..., Services],
) -> None:
    first = servers("first")

    async def scenario() -> tuple[str, str]:
        ledger = first.ledger
        await ledger.register_node(Node("n1", {"cpu": 4000}, labels={"zone": "a"}))
        kept = await ledger.grant({"cpu": 1000}, node="n1", owner="alice")
        gone = await ledger.grant({"cpu": 2000}, node="n1", owner="bob")
        once = await ledger.release(gone.id, ReleaseReason.COMPLETED)
        twice = await ledger.release(gone.id, ReleaseReason.CANCELLED)
        assert (once.reason, twice.reason, twice.released_at) == (
            ReleaseReason.COMPLETED,
            ReleaseReason.COMPLETED,
            once.released_at,
        )
        with pytest.raises(AllocationNotFound, match="allocation nope not found"):
            await ledger.release("nope", ReleaseReason.RELEASED)
        return kept.id, gone.id

    kept, _ = asyncio.run(scenario())
    again = servers("again")
    assert again.ledger.node("n1").labels == {"zone": "a"}
    assert list(again.ledger.active()) == [kept]
    assert again.ledger.allocated("n1") == {"cpu": 1000}


def test_an_allocation_id_reads_as_a_uuid7_that_grows_with_time() -> None:
    """RFC 9562 version 7: the milliseconds of its making, then random bits;
    ids made in a later millisecond sort after earlier ones (so new rows land
    at the right edge of the primary key's index)."""
    import itertools
    import time
    from uuid import RFC_4122, UUID

    from apportion.service.ledger_service import new_id

    before = time.time_ns() // 1_000_000
    ids = [new_id() for _ in range(2000)]
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == 2000
    for i in ids:
        parsed = UUID(hex=i)
        assert parsed.hex == i and parsed.version == 7 and parsed.variant == RFC_4122
        assert before <= int(i[:12], 16) <= after
    stamps = [int(i[:12], 16) for i in ids]
    assert stamps == sorted(stamps)
    assert all(a < b for a, b in itertools.pairwise(ids) if a[:12] != b[:12])
