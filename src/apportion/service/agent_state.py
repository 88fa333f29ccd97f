"""What a server knows of agents: their timing settings, one node's session,
and the rules for a node whose agent is heard again (the state it returns
to, the devices it must keep while allocations hold them)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from typing import Any

from apportion.core.model import Device, Node, NodeState
from apportion.core.records import SessionRow
from apportion.service.ledger_service import LedgerService


@dataclass(frozen=True, slots=True)
class AgentSettings:
    """Server-side timing of agents."""

    down_after_s: float = 60.0
    """Silence after which a node is down and its tasks are requeued (at
    least the agent's stop_after_disconnect plus one heartbeat)."""
    sweep_s: float = 1.0
    poll_hold_s: float = 20.0
    """How long an assignments long-poll is held open when nothing changes."""
    flush_s: float = 1.0
    """How often heartbeats noted in memory are written to the store."""
    pickup_s: float = 60.0
    """A task its agent has not started within this is placed again."""

    @classmethod
    def of(cls, down_after_s: float | None, sweep_s: float | None,
           poll_hold_s: float | None, pickup_s: float | None = None) -> AgentSettings:
        """The defaults, with the values given (APPORTION_NODE_DOWN_AFTER,
        APPORTION_NODE_SWEEP_INTERVAL, APPORTION_POLL_HOLD, APPORTION_PICKUP_DEADLINE)."""
        given = {"down_after_s": down_after_s, "sweep_s": sweep_s, "poll_hold_s": poll_hold_s,
                 "pickup_s": pickup_s}
        return cls(**{k: v for k, v in given.items() if v is not None})


@dataclass
class Session:
    """What this server knows of one node's agent (its store row, plus what
    it heard itself since the last flush)."""

    node: str
    agent_id: str
    heartbeat_s: float
    stop_after_s: float
    last_seen: float
    """Wall-clock time the agent was last heard, by any server."""
    heartbeat_at: float | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    tasks: list[dict[str, Any]] = field(default_factory=list)
    prior_state: NodeState | None = None
    rescans: int = 0
    drain_deadline: float | None = None

    @classmethod
    def of(cls, row: SessionRow) -> Session:
        return cls(row.node, row.agent_id, row.heartbeat_s, row.stop_after_s, row.last_seen,
                   row.heartbeat_at, row.usage or {}, row.tasks or [],
                   NodeState(row.prior_state) if row.prior_state else None, row.rescans,
                   row.drain_deadline)


@dataclass
class Waker:
    """Wakes one node's held long-polls on this server."""

    version: int = 0
    event: asyncio.Event = field(default_factory=asyncio.Event)

    def wake(self) -> None:
        self.version += 1
        self.event.set()
        self.event = asyncio.Event()


def rejoined(state: NodeState, session: Session | None) -> NodeState:
    """The state a node returns to when its agent is heard again."""
    if state not in (NodeState.SUSPECT, NodeState.DOWN):
        return state
    prior = session.prior_state if session is not None else None
    if prior is None or prior in (NodeState.SUSPECT, NodeState.DOWN):
        return NodeState.READY
    return prior


def keep_allocated(ledger: LedgerService, current: Node,
                    fresh: Node) -> tuple[Node, dict[str, list[str]]]:
    """``fresh`` with every allocated device and amount it lacks put back
    (devices marked ``lost``), and the lost device ids per resource."""
    held: dict[str, set[str]] = {}
    for alloc in ledger.allocations_on(current.name):
        for resource, ids in alloc.devices.items():
            held.setdefault(resource, set()).update(ids)
    devices = {r: list(ds) for r, ds in fresh.devices.items()}
    lost: dict[str, list[str]] = {}
    for resource, wanted in held.items():
        offered = {d.id for d in devices.get(resource, [])}
        missing = sorted(wanted - offered)
        if not missing:
            continue
        lost[resource] = missing
        old = {d.id: d for d in current.devices.get(resource, ())}
        devices.setdefault(resource, []).extend(
            replace(old[i], attrs={**old[i].attrs, "lost": True}) if i in old
            else Device(i, attrs={"lost": True}) for i in missing)
    resources = dict(fresh.resources)
    for resource, ds in devices.items():
        resources[resource] = len(ds)
    for resource, used in ledger.allocated(current.name).items():
        if used and resources.get(resource, 0) < used:
            resources[resource] = used  # never a negative balance
    kept = {r: tuple(ds) for r, ds in devices.items()}
    return replace(fresh, resources=resources, devices=kept), lost
