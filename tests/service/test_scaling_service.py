"""Autoscaling node pools (``service/scaling_service.py``): waiting work that
fits nowhere scales an ``auto`` pool up (one join token per node, handed to
the provider), the node joins with its pool's labels, and once idle it is
drained, deleted and terminated, its credentials revoked; a node that never
joins is terminated after the join timeout. The provider is a fake cloud
passed in through the constructor, as ``wiring._scaling`` passes the
configured ones."""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Sequence

import pytest
import sqlalchemy as sa

from apportion.core.model import Node
from apportion.exceptions import Unauthenticated
from apportion.providers.base import (
    InstanceState,
    JoinSpec,
    Provider,
    ProvisionedNode,
    terminated,
)
from apportion.providers.config import config_from_data
from apportion.service.scaling_service import ScalingService, ScalingSettings
from apportion.service.wiring import Services
from apportion.store.schema import events
from service.builders import stored_events
from support import Clock

T0 = 1_700_000_000.0
NODE_TYPES = [{"name": "c4", "resources": {"cpu": "4"}, "price_per_hour": 0.5}]
CONFIG = {
    "providers": {"cloud": {"kind": "local", "node_types": NODE_TYPES}},
    "pools": [
        {
            "name": "burst",
            "provider": "cloud",
            "node_type": "c4",
            "min_size": 0,
            "max_size": 2,
            "mode": "auto",
            "window_s": 0,
            "cooldown_up_s": 0,
            "cooldown_down_s": 0,
        }
    ],
}


class FakeCloud(Provider):
    """Machines in a dict: what was asked for, and what was terminated."""

    kind = "fake"

    def __init__(self, clock: Clock) -> None:
        super().__init__("cloud", {"node_types": NODE_TYPES})
        self.clock = clock
        self.machines: dict[str, ProvisionedNode] = {}
        self.tokens: dict[str, str] = {}

    def create(
        self, pool: str, node_type: str, count: int, join: JoinSpec
    ) -> builtins.list[ProvisionedNode]:
        made = []
        for name in join.names(pool, count):
            node = ProvisionedNode(
                f"i-{len(self.machines)}",
                name,
                pool,
                node_type,
                InstanceState.PROVISIONING,
                self.clock.now,
            )
            self.machines[node.id] = node
            self.tokens[name] = join.join_token.reveal()
            made.append(node)
        return made

    def terminate(self, ids: Sequence[str]) -> builtins.list[ProvisionedNode]:
        for id in ids:
            self.machines.pop(id, None)
        return [terminated(id, self.name) for id in ids]

    def status(self, id: str) -> ProvisionedNode:
        return self.machines.get(id) or terminated(id, self.name)

    def list(self, pool: str | None = None) -> builtins.list[ProvisionedNode]:
        return [n for n in self.machines.values() if pool in (None, n.pool)]


def _scaling(s: Services, cloud: FakeCloud, clock: Clock) -> ScalingService:
    """As ``wiring._scaling`` builds it, over the fake cloud."""
    agents = s.agents

    async def drain(node: str) -> None:
        await agents.drain(node, None)

    service = ScalingService(
        s.uow,
        s.ledger,
        s.jobs,
        s.auth,
        s.join_tokens,
        config_from_data(CONFIG, {}),
        drain=drain,
        providers={"cloud": cloud},
        settings=ScalingSettings(join_timeout_s=900.0),
        clock=clock,
    )
    service.load()
    return service


async def _one_job_waits(s: Services) -> None:
    """A full node, and a job that needs another: work that waits for the pool."""
    await s.ledger.register_node(Node("base", {"cpu": 1000}))
    await s.ledger.grant({"cpu": 1000}, node="base", owner="steady")
    await s.jobs.submit({"resources": {"cpu": "1"}}, "alice")


def _kinds(s: Services) -> list[str]:
    """The kinds of the scaling events stored, oldest first, but its decisions."""
    return [
        e.kind
        for e in stored_events(s)
        if e.kind.startswith("scaling.") and e.kind != "scaling.decision"
    ]


def test_waiting_work_brings_a_node_that_joins_runs_it_and_is_given_back(
    services: Services,
) -> None:
    clock = Clock(T0)
    cloud = FakeCloud(clock)
    scaling = _scaling(services, cloud, clock)

    async def scenario() -> None:
        await services.leadership.campaign_round()
        ledger, jobs = services.ledger, services.jobs
        await ledger.register_node(Node("base", {"cpu": 4000}))
        await ledger.grant({"cpu": 4000}, node="base", owner="steady")  # base is full
        assert [n.name for n in scaling.potential_nodes()] == ["~burst-0", "~burst-1"]
        job = await jobs.submit({"resources": {"cpu": "4"}}, "alice")

        [up] = await scaling.tick()
        assert (up["decision"], up["count"], up["pending_tasks"]) == ("scale_up", 1, 1)
        [machine] = cloud.machines.values()
        name = machine.node_name
        assert name.startswith("burst-") and scaling.pools["burst"].joining.keys() == {name}

        joined = await services.agents.join(
            cloud.tokens[name], Node(name, {"cpu": 4000}), {"id": "agent-b"}
        )
        assert {k: joined.node.labels[k] for k in ("pool", "provider", "node-type")} == {
            "pool": "burst",
            "provider": "cloud",
            "node-type": "c4",
        }
        await jobs.run_cycle()
        row, [task] = await jobs.get(job.id)
        assert (row.state, task.node) == ("running", name)

        clock.now += 60
        [busy] = await scaling.tick()
        assert (busy["decision"], busy["size"], busy["joining"]) == ("none", 1, [])
        await jobs.complete(job.id, succeeded=True, exit_code=0)

        clock.now += 60
        [down] = await scaling.tick()
        assert (down["decision"], down["nodes"]) == ("scale_down", [name])
        # Drained, found empty, deleted and terminated in the same round.
        assert name not in ledger.nodes
        assert cloud.machines == {}
        with pytest.raises(Unauthenticated):
            await services.auth.authenticate(f"Bearer {joined.agent_token}")
        await services.leadership.stop()

    asyncio.run(scenario())
    assert _kinds(services) == [
        "scaling.scale_up",
        "scaling.node_created",
        "scaling.scale_down",
        "scaling.node_draining",
        "scaling.node_terminated",
    ]


def test_a_node_awaited_by_waiting_work_is_kept_until_it_joins_or_times_out(
    services: Services,
) -> None:
    clock = Clock(T0)
    cloud = FakeCloud(clock)
    scaling = _scaling(services, cloud, clock)

    async def scenario() -> None:
        await _one_job_waits(services)
        await scaling.tick()
        [machine] = cloud.machines.values()
        name = machine.node_name
        # The pool is idle and may scale down at once (no cooldown), but the
        # job waits for this node: it was terminated here, and asked for
        # again, at every round.
        clock.now += 60
        [kept] = await scaling.tick()
        assert (kept["decision"], kept["joining"]) == ("none", [name])
        clock.now += 840
        await scaling.tick()  # 900 s: not yet past the join timeout
        assert list(cloud.machines) == [machine.id]
        clock.now += 1
        await scaling.tick()
        assert cloud.machines == {}
        with pytest.raises(Unauthenticated, match=f"join token for node {name}"):
            services.join_tokens.redeem(cloud.tokens[name], name)
        [again] = await scaling.tick()  # the job still waits: a new node
        assert (again["decision"], again["count"]) == ("scale_up", 1)
        [fresh] = cloud.machines.values()
        assert fresh.node_name != name

    asyncio.run(scenario())
    assert _kinds(services) == [
        "scaling.scale_up",
        "scaling.node_created",
        "scaling.node_terminated",
        "scaling.scale_up",
        "scaling.node_created",
    ]


def test_a_restarted_service_remembers_its_last_actions_and_joining_nodes(
    services: Services,
) -> None:
    clock = Clock(T0)
    cloud = FakeCloud(clock)
    first = _scaling(services, cloud, clock)

    async def scenario() -> None:
        await _one_job_waits(services)
        await first.tick()

    asyncio.run(scenario())
    again = _scaling(services, cloud, clock)
    pool = again.pools["burst"]
    [machine] = cloud.machines.values()
    with services.uow.engine.connect() as conn:
        up_at = conn.execute(
            sa.select(events.c.at).where(events.c.kind == "scaling.scale_up")
        ).scalar_one()
    assert (pool.last_up, list(pool.joining)) == (up_at, [machine.node_name])
    assert pool.joining[machine.node_name].provider_id == machine.id
