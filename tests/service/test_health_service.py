"""Node health from heartbeats (``service/health_service.py``): each sample
judged by the core's rules with the last report passed back (so a reading
hovering at a threshold does not flap), a status change recorded on the
node in the ledger, a silent node judged again by the sweep, and repeated
task failures making a node degraded."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from apportion.core.health import DEFAULT_THRESHOLDS
from apportion.core.model import Health, Node
from apportion.service.health_service import HealthService
from apportion.service.wiring import Services
from support import Clock

T0 = 1_700_000_000.0


def _gpu(temperature: float) -> dict[str, object]:
    return {"gpus": [{"index": 0, "temperature_c": temperature}]}


def test_a_hot_gpu_degrades_its_node_until_it_has_cooled_well_below_the_limit(
    servers: Callable[..., Services],
) -> None:
    server = servers("a")
    clock = Clock(T0)
    health = HealthService(server.ledger, DEFAULT_THRESHOLDS, clock=clock)

    async def scenario() -> list[Health]:
        await server.ledger.register_node(Node("n1", {"cpu": 4000, "gpu": 1}))
        seen = []
        for temperature in (70.0, 82.0, 78.0, 91.0, 86.0, 74.0):
            clock.now += 10
            report = await health.observe("n1", _gpu(temperature), interval_s=10.0)
            assert server.ledger.node("n1").health is report.status
            seen.append(report.status)
        return seen

    seen = asyncio.run(scenario())
    # 78 stays degraded (clears below 80 - 5), 86 stays unhealthy (below 90 - 5).
    assert seen == [
        Health.HEALTHY,
        Health.DEGRADED,
        Health.DEGRADED,
        Health.UNHEALTHY,
        Health.UNHEALTHY,
        Health.HEALTHY,
    ]
    report = health.report("n1")
    assert [(c["previous"], c["current"], c["at"]) for c in report["recent_changes"]] == [
        ("unhealthy", "healthy", T0 + 60),
        ("degraded", "unhealthy", T0 + 40),
        ("healthy", "degraded", T0 + 20),
    ]
    assert (report["status"], report["last_heartbeat_at"], report["heartbeat_interval_s"]) == (
        "healthy",
        T0 + 60,
        10.0,
    )
    # The change is stored with the node: another server reads it.
    again = servers("b")
    assert again.ledger.node("n1").health is Health.HEALTHY


def test_the_sweep_judges_a_node_whose_heartbeats_stopped(services: Services) -> None:
    clock = Clock(T0)
    health = HealthService(services.ledger, DEFAULT_THRESHOLDS, clock=clock)

    async def scenario() -> None:
        await services.ledger.register_node(Node("n1", {"cpu": 4000}))
        await services.ledger.register_node(Node("gone", {"cpu": 4000}))
        await health.observe("n1", {}, interval_s=10.0)
        await health.observe("gone", {}, interval_s=10.0)
        await services.ledger.delete_node("gone", force=False)
        clock.now += 20
        assert await health.sweep() == []  # two intervals: the next may be in flight
        clock.now += 1
        [late] = await health.sweep()
        assert (late.node, late.previous, late.current) == ("n1", Health.HEALTHY, Health.DEGRADED)
        clock.now += 10
        [lost] = await health.sweep()
        assert lost.current is Health.UNHEALTHY
        assert lost.reasons[0].message == (
            "no heartbeat for 31 s (3.1 intervals of 10 s) > critical 3"
        )
        assert services.ledger.node("n1").health is Health.UNHEALTHY

    asyncio.run(scenario())


def test_repeated_task_failures_degrade_a_node(services: Services) -> None:
    clock = Clock(T0)
    health = HealthService(services.ledger, DEFAULT_THRESHOLDS, clock=clock)

    async def scenario() -> None:
        await services.ledger.register_node(Node("n1", {"cpu": 4000}))
        for _ in range(3):
            health.record_failure("n1")
            clock.now += 1
        report = await health.observe("n1", {})
        assert report.status is Health.DEGRADED
        assert report.reasons[0].message == "3 task failures in the last 600 s ≥ warning 3"
        clock.now += 600  # the failures have aged out of the window
        assert (await health.observe("n1", {})).status is Health.HEALTHY

    asyncio.run(scenario())
