"""Alerts (``service/alerts_service.py``): one alert per condition, stored,
so that a new leader carries it on with its start time instead of raising
it again; a webhook delivery row is written with each change."""

from __future__ import annotations

import asyncio

import sqlalchemy as sa

from apportion.core.model import Node, ReleaseReason
from apportion.service.alerts_service import AlertSettings, AlertsService
from apportion.service.wiring import Services
from apportion.store.schema import alert_deliveries
from support import Clock

SETTINGS = AlertSettings(capacity_threshold=0.5, capacity_critical=0.99,
                         webhooks=("http://127.0.0.1:9/hook",))


def _alerts(services: Services, clock: Clock) -> AlertsService:
    """A leader's alerts service, with the limits above."""
    return AlertsService(services.uow, services.ledger, services.jobs, services.health,
                         SETTINGS, clock=clock)


def test_a_capacity_alert_is_raised_once_carried_on_by_a_new_leader_and_resolved(
        services: Services) -> None:
    clock = Clock(1_700_000_000.0)

    async def scenario() -> None:
        ledger = services.ledger
        await ledger.register_node(Node("n1", {"cpu": 4000}, labels={"facility": "f1"}))
        alloc = await ledger.grant({"cpu": 3000}, owner="alice")
        first = _alerts(services, clock)
        [raised] = await first.evaluate()
        assert (raised.kind.value, raised.alert.rule.value, raised.alert.severity.value) == (
            "raised", "capacity_utilization", "warning")
        clock.now += 10
        assert await first.evaluate() == []  # still true: the same alert, not a new one

        leader = _alerts(services, clock)  # another server takes over
        clock.now += 10
        assert await leader.evaluate() == []
        [firing] = await leader.listing(state="firing", severity=None)
        assert firing["started_at"] == raised.alert.to_dict()["started_at"]

        await ledger.release(alloc.id, ReleaseReason.COMPLETED)
        [resolved] = await leader.evaluate()
        assert resolved.kind.value == "resolved"
        assert await leader.listing(state="firing", severity=None) == []
        [row] = await leader.listing(state="resolved", severity=None)
        assert (row["rule"], row["started_at"]) == ("capacity_utilization",
                                                    firing["started_at"])

    asyncio.run(scenario())
    with services.uow.engine.connect() as conn:
        deliveries = conn.execute(sa.select(alert_deliveries.c.url, alert_deliveries.c.state)
                                  .order_by(alert_deliveries.c.id)).all()
    # One delivery per change (raised, resolved), none for the evaluations between.
    assert [tuple(d) for d in deliveries] == [("http://127.0.0.1:9/hook", "pending")] * 2
