"""What a server knows of agents (``service/agent_state.py``): its timing
settings, the state a node returns to when its agent is heard again, and
the devices a re-registering node must keep while allocations hold them."""

from __future__ import annotations

import asyncio

import pytest

from apportion.core.model import Device, Node, NodeState
from apportion.service.agent_state import AgentSettings, Session, keep_allocated, rejoined
from apportion.service.wiring import Services


def _session(prior: NodeState | None) -> Session:
    return Session("n1", "agent-1", 5.0, 60.0, 100.0, prior_state=prior)


def test_settings_take_what_is_given_and_default_the_rest() -> None:
    assert AgentSettings.of(None, None, None) == AgentSettings(60.0, 1.0, 20.0, 1.0, 60.0)
    assert AgentSettings.of(120.0, None, 5.0, pickup_s=30.0) == AgentSettings(
        down_after_s=120.0, sweep_s=1.0, poll_hold_s=5.0, flush_s=1.0, pickup_s=30.0)


@pytest.mark.parametrize(("state", "prior", "expected"), [
    # Heard again while not lost: nothing changes.
    (NodeState.READY, None, NodeState.READY),
    (NodeState.CORDONED, NodeState.READY, NodeState.CORDONED),
    (NodeState.DRAINING, None, NodeState.DRAINING),
    # Lost and back: the state it had before it was lost ...
    (NodeState.DOWN, NodeState.CORDONED, NodeState.CORDONED),
    (NodeState.SUSPECT, NodeState.DRAINING, NodeState.DRAINING),
    # ... or ready, when that is unknown or was itself a loss.
    (NodeState.DOWN, None, NodeState.READY),
    (NodeState.SUSPECT, NodeState.DOWN, NodeState.READY),
])
def test_the_state_a_node_returns_to(state: NodeState, prior: NodeState | None,
                                     expected: NodeState) -> None:
    assert rejoined(state, _session(prior)) == expected


def test_a_lost_node_without_a_session_is_ready_again() -> None:
    assert rejoined(NodeState.DOWN, None) == NodeState.READY


def test_a_node_that_comes_back_smaller_keeps_what_its_allocations_hold(
        services: Services) -> None:
    ledger = services.ledger
    gpus = tuple(Device(str(i), model="H100") for i in range(3))
    current = Node("n1", {"cpu": 8000, "gpu": 3}, devices={"gpu": gpus})

    async def scenario() -> Node:
        await ledger.register_node(current)
        held = await ledger.grant({"cpu": 6000, "gpu": 2}, node="n1", owner="alice")
        assert held.devices == {"gpu": ("0", "1")}
        return ledger.node("n1")

    stored = asyncio.run(scenario())
    # The agent now finds only GPU 1 and 2, and less cpu than is allocated.
    fresh = Node("n1", {"cpu": 4000, "gpu": 2}, devices={"gpu": (gpus[1], gpus[2])})
    kept, lost = keep_allocated(ledger, stored, fresh)
    assert lost == {"gpu": ["0"]}
    assert [(d.id, d.attrs) for d in kept.devices["gpu"]] == [
        ("1", {}), ("2", {}), ("0", {"lost": True})]
    assert kept.devices["gpu"][2].model == "H100"  # what was known of it stays
    assert kept.resources == {"cpu": 6000, "gpu": 3}  # never below what is allocated


def test_a_node_that_comes_back_whole_is_taken_as_it_reports(services: Services) -> None:
    current = Node("n1", {"cpu": 8000})
    asyncio.run(services.ledger.register_node(current))
    fresh = Node("n1", {"cpu": 16000}, labels={"zone": "b"})
    assert keep_allocated(services.ledger, current, fresh) == (fresh, {})
