"""Agents (``service/agents_service.py``): a node registers with its agent,
heartbeats keep it ready (and bring a lost one back), silence makes it
suspect and then down with its tasks lost, a report that ends a task
releases its allocation in the transaction that ends it, a poll wakes when
the node's desired state changes, and a join token registers a new node once.

The service is built as ``service/wiring.py`` builds it, with a clock the
test moves: silence is measured on it, never waited for."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from apportion.core.model import Node, NodeState, ReleaseReason
from apportion.core.records import JobRow
from apportion.exceptions import AgentUnknown, NodeExists
from apportion.service.agent_state import AgentSettings
from apportion.service.agents_service import AgentsService
from apportion.service.jobs import TaskReport
from apportion.service.wiring import Services
from service.builders import as_leader, stored_events
from support import Clock

T0 = 1_700_000_000.0
AGENT = {"id": "agent-1", "heartbeat_s": 5.0, "stop_after_disconnect_s": 60.0}
"""Suspect after 3 x 5 s + 1 s flush = 16 s; down after max(60, 60 + 5) + 1 = 66 s."""


def _agents(
    s: Services,
    clock: Clock,
    *,
    leader_since: Callable[[], float | None] = lambda: None,
    poll_hold_s: float | None = None,
) -> AgentsService:
    """The agents service as ``wiring.build`` makes it, on the test's clock."""
    return AgentsService(
        s.uow,
        s.ledger,
        s.jobs,
        s.health,
        server_id="s1",
        epoch=lambda: s.leadership.epoch,
        auth=s.auth,
        join_tokens=s.join_tokens,
        files=s.files,
        leader_since=leader_since,
        settings=AgentSettings.of(None, None, poll_hold_s),
        clock=clock,
    )


def test_a_registered_node_is_marked_as_run_by_an_agent_and_heartbeats_keep_it_ready(
    services: Services,
) -> None:
    clock = Clock(T0)
    agents = _agents(services, clock)

    async def scenario() -> None:
        node = await agents.register(Node("n1", {"cpu": 4000}, labels={"zone": "a"}), AGENT)
        assert node.labels == {"zone": "a", "apportion.io/agent": "true"}
        assert node.specs["agent"] == AGENT
        assert agents.has_agent("n1")
        clock.now += 4
        answer = await agents.heartbeat("n1", "agent-1", {"cpu_percent": 10.0}, [])
        assert (answer["node_state"], answer["registered"], answer["epoch"]) == (
            "ready",
            True,
            agents.epoch,
        )
        assert agents.silences() == {"n1": 0.0}
        described = agents.describe("n1")
        assert (described["last_heartbeat"], described["usage"], described["down_after_s"]) == (
            T0 + 4,
            {"cpu_percent": 10.0},
            66.0,
        )
        # A node the ledger knows without an agent's session is told to register.
        await services.ledger.register_node(Node("bare", {"cpu": 1000}))
        assert await agents.heartbeat("bare", "agent-9", {}, []) == {
            "node_state": "ready",
            "epoch": agents.epoch,
            "registered": False,
        }
        with pytest.raises(AgentUnknown, match="node bare has no registered agent"):
            agents.describe("bare")

    as_leader(services, scenario)


def test_silence_makes_a_node_suspect_then_down_and_a_heartbeat_brings_it_back(
    services: Services,
) -> None:
    clock = Clock(T0)
    agents = _agents(services, clock)

    async def scenario() -> None:
        await agents.register(Node("n1", {"cpu": 4000}), AGENT)
        await agents.set_state("n1", NodeState.CORDONED)
        clock.now += 16
        await agents.sweep()
        assert services.ledger.node("n1").state is NodeState.CORDONED  # not yet 16 s silent
        clock.now += 1
        await agents.sweep()
        assert services.ledger.node("n1").state is NodeState.SUSPECT
        # The heartbeat returns it to the state it had before it was lost.
        answer = await agents.heartbeat("n1", "agent-1", {}, [])
        assert answer["node_state"] == "cordoned"
        assert services.ledger.node("n1").state is NodeState.CORDONED

        await agents.set_state("n1", NodeState.READY)
        clock.now += 67
        await agents.sweep()
        assert services.ledger.node("n1").state is NodeState.DOWN
        await agents.heartbeat("n1", "agent-1", {}, [])
        assert services.ledger.node("n1").state is NodeState.READY

    as_leader(services, scenario)


def test_a_new_leader_counts_silence_from_its_election(services: Services) -> None:
    clock = Clock(T0)
    elected = T0 + 100
    agents = _agents(services, clock, leader_since=lambda: elected)

    async def scenario() -> None:
        await agents.register(Node("n1", {"cpu": 4000}), AGENT)
        clock.now = elected + 16  # 116 s since the agent was heard, 16 since the election
        await agents.sweep()
        assert services.ledger.node("n1").state is NodeState.READY
        clock.now = elected + 17
        await agents.sweep()
        assert services.ledger.node("n1").state is NodeState.SUSPECT

    as_leader(services, scenario)


def test_a_report_that_ends_a_task_releases_its_allocation_with_it(services: Services) -> None:
    clock = Clock(T0)
    agents = _agents(services, clock)

    async def scenario() -> None:
        await agents.register(Node("n1", {"cpu": 4000}), AGENT)
        await agents.register(Node("n2", {"cpu": 4000}), {**AGENT, "id": "agent-2"})
        await services.ledger.set_node_state("n2", NodeState.CORDONED)
        job = await services.jobs.submit({"command": ["true"], "resources": {"cpu": "1"}}, "alice")
        await services.jobs.run_cycle()
        desired = await agents.assignments("n1", after=0, epoch=None, wait=0)
        [assignment] = desired.tasks
        assert (
            assignment.job_id,
            assignment.command,
            assignment.resources_base,
            assignment.state,
        ) == (job.id, ("true",), {"cpu": 1000}, "scheduled")
        task_id = assignment.id
        assert services.ledger.allocated("n1") == {"cpu": 1000}

        assert await agents.report("n2", task_id, TaskReport("running")) == {
            "known": False,
            "active": False,
            "state": "scheduled",
        }  # not n2's task
        assert await agents.report("n1", task_id, TaskReport("running")) == {
            "known": True,
            "active": True,
            "state": "running",
        }
        row, _ = await services.jobs.get(job.id)
        assert row.state == "running"

        ended = await agents.report("n1", task_id, TaskReport("exited", exit_code=0))
        assert ended == {
            "known": True,
            "active": False,
            "state": "succeeded",
            "reason": "exit code 0",
        }
        assert services.ledger.allocated("n1") == {"cpu": 0}
        row, [task] = await services.jobs.get(job.id)
        assert (row.state, task.state, task.exit_code) == ("succeeded", "succeeded", 0)
        alloc = await services.ledger.get_allocation(assignment.allocation_id)
        assert (alloc.active, alloc.reason) == (False, ReleaseReason.COMPLETED)
        # One transaction: the release carries the instant the task ended.
        assert alloc.released_at == task.ended_at
        # A repeated report changes nothing.
        assert await agents.report("n1", task_id, TaskReport("exited", exit_code=1)) == {
            "known": True,
            "active": False,
            "state": "succeeded",
        }
        assert (await agents.assignments("n1", after=0, epoch=None, wait=0)).tasks == ()

    as_leader(services, scenario)


async def _running_sleeper(services: Services, agents: AgentsService, **spec: Any) -> JobRow:
    """A job of one ``sleep`` task on n1, placed and reported running."""
    job = await services.jobs.submit(
        {"command": ["sleep", "1d"], "resources": {"cpu": "2"}, **spec}, "alice")
    await services.jobs.run_cycle()
    _, [task] = await services.jobs.get(job.id)
    await agents.report("n1", task.id, TaskReport("running"))
    return job


def test_a_lost_node_ends_its_tasks_as_lost_and_releases_what_they_held(services: Services) -> None:
    clock = Clock(T0)
    agents = _agents(services, clock)

    async def scenario() -> None:
        await agents.register(Node("n1", {"cpu": 4000}), AGENT)
        job = await _running_sleeper(services, agents, restart={"policy": "on-failure"})
        plain = await services.ledger.grant({"cpu": 1000}, node="n1", owner="bob")
        clock.now += 67
        await agents.sweep()
        assert services.ledger.node("n1").state is NodeState.DOWN
        row, [lost] = await services.jobs.get(job.id)
        assert (lost.state, lost.reason) == ("lost", "node n1 lost")
        # Requeued by its restart policy, to run elsewhere.
        assert (row.state, row.reason) == ("pending", "retry 1 of 3 after node n1 lost")
        assert services.ledger.allocated("n1") == {"cpu": 0}
        released = await services.ledger.get_allocation(plain.id)
        assert released.reason is ReleaseReason.NODE_LOST

    as_leader(services, scenario)


def test_a_node_left_down_with_its_tasks_by_a_deposed_leader_loses_them_at_the_next_sweep(
    services: Services,
) -> None:
    clock = Clock(T0)
    agents = _agents(services, clock)

    async def scenario() -> None:
        await agents.register(Node("n1", {"cpu": 4000}), AGENT)
        job = await _running_sleeper(services, agents)
        # What a leader deposed halfway through ``_node_down`` leaves: the node
        # marked down, its task still running on it.
        await services.ledger.set_node_state("n1", NodeState.DOWN)
        clock.now += 67
        await agents.sweep()
        _, [lost] = await services.jobs.get(job.id)
        assert (lost.state, lost.reason) == ("lost", "node n1 lost")
        assert services.ledger.allocated("n1") == {"cpu": 0}

    as_leader(services, scenario)


def test_a_drain_past_its_deadline_asks_the_agent_to_stop_what_runs(services: Services) -> None:
    clock = Clock(T0)
    agents = _agents(services, clock)

    async def scenario() -> None:
        await agents.register(Node("n1", {"cpu": 4000}), AGENT)
        job = await services.jobs.submit(
            {"command": ["sleep", "1d"], "resources": {"cpu": "1"}}, "alice"
        )
        await services.jobs.run_cycle()
        _, [task] = await services.jobs.get(job.id)
        await agents.report("n1", task.id, TaskReport("running"))
        drained = await agents.drain("n1", 30.0)
        assert drained.state is NodeState.DRAINING
        assert agents.describe("n1")["draining_until"] == T0 + 30
        clock.now += 10
        await agents.heartbeat("n1", "agent-1", {}, [])
        await agents.sweep()
        [assignment] = (await agents.assignments("n1", after=0, epoch=None, wait=0)).tasks
        assert assignment.stop is None  # the deadline has not passed
        clock.now += 21
        await agents.heartbeat("n1", "agent-1", {}, [])
        await agents.sweep()
        [assignment] = (await agents.assignments("n1", after=0, epoch=None, wait=0)).tasks
        assert (assignment.stop.state, assignment.stop.reason) == (  # type: ignore[union-attr]
            "preempted",
            "node n1 drained",
        )
        assert agents.describe("n1")["draining_until"] is None

    as_leader(services, scenario)


def test_a_held_poll_wakes_when_the_node_is_given_a_task(services: Services) -> None:
    clock = Clock(T0)
    # Held up to ten minutes: only the placement's wake-up can end it in time.
    agents = _agents(services, clock, poll_hold_s=600.0)

    async def scenario() -> None:
        await agents.register(Node("n1", {"cpu": 4000}), AGENT)
        first = await agents.assignments("n1", after=0, epoch=None, wait=600)
        assert first.tasks == ()  # another server run's epoch: answered at once
        poll = asyncio.ensure_future(
            agents.assignments("n1", after=first.seq, epoch=first.epoch, wait=600)
        )
        job = await services.jobs.submit({"command": ["true"], "resources": {"cpu": "1"}}, "alice")
        await services.jobs.run_cycle()
        woken = await asyncio.wait_for(poll, timeout=60)
        assert woken.seq > first.seq
        assert [a.job_id for a in woken.tasks] == [job.id]

    as_leader(services, scenario)


def test_a_join_token_registers_its_node_once_with_an_agent_token(services: Services) -> None:
    clock = Clock(T0)
    agents = _agents(services, clock)
    token = services.join_tokens.issue("gpu-pool", "p-1", {"pool": "gpu-pool"})

    async def scenario() -> None:
        joined = await agents.join(
            token, Node("p-1", {"cpu": 2000}, labels={"zone": "b"}), {"id": "agent-p1"}
        )
        assert joined.pool == "gpu-pool"
        assert joined.node.labels == {"zone": "b", "pool": "gpu-pool", "apportion.io/agent": "true"}
        principal = await services.auth.authenticate(f"Bearer {joined.agent_token}")
        assert (principal.name, principal.role.value) == ("p-1", "agent")
        with pytest.raises(NodeExists, match="node p-1 already exists"):
            await agents.join(token, Node("p-1", {"cpu": 2000}), {"id": "agent-p1"})

    asyncio.run(scenario())
    events = stored_events(services)
    assert [(e.subject, e.data["pool"]) for e in events if e.kind == "node.joined"] == [
        ("p-1", "gpu-pool")
    ]
