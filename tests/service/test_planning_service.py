"""Capacity planning (``service/planning_service.py``): waiting work shared
among the groups it may use, the planner's series recorded with every
history sample, a window read from rollups and then from the raw samples
after them, and the exhaustion forecasts handed to the alerts service."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from apportion.core.history import Retention
from apportion.core.model import Node, ReleaseReason
from apportion.exceptions import InvalidInput
from apportion.service.history_service import HistoryService, HistorySettings
from apportion.service.planning_service import PlanningService, PlanningSettings
from apportion.service.wiring import Services
from planning_support import seed_history
from support import Clock

T0 = 1_700_000_100.0
"""A multiple of the 300 s rollup step."""
HISTORY = HistorySettings(
    60.0, Retention(raw_s=3600.0, rollup_step_s=300.0, rollup_s=3600.0, max_points=1000)
)


def _planner(s: Services, clock: Clock) -> PlanningService:
    """As ``wiring.build`` makes it, over a history of its own on the test's clock."""
    history = HistoryService(s.uow.engine, s.ledger, s.jobs, HISTORY, clock=clock)
    return PlanningService(
        s.ledger, s.jobs, history, s.alerts, PlanningSettings(), clock=clock
    ).install()


def test_waiting_work_is_shared_among_the_groups_it_may_use(services: Services) -> None:
    planner = _planner(services, Clock(T0))

    async def scenario() -> None:
        ledger = services.ledger
        await ledger.register_node(Node("a1", {"cpu": 4000}, labels={"facility": "f1"}))
        await ledger.register_node(Node("b1", {"cpu": 12000}, labels={"facility": "f2"}))
        await ledger.grant({"cpu": 1000}, node="a1", owner="alice")
        await services.jobs.submit({"resources": {"cpu": "4"}}, "bob")  # may go anywhere
        await services.jobs.submit(
            {"resources": {"cpu": "2"}, "constraints": ["facility=f2"]}, "bob"
        )

    asyncio.run(scenario())
    # 4 cpu shared by capacity (1 : 3), 2 cpu for f2 alone.
    assert planner.current("facility") == [
        {"group": "f1", "nodes": 1, "resources": {"cpu": (4000, 1000, 1000.0)}},
        {"group": "f2", "nodes": 1, "resources": {"cpu": (12000, 0, 5000.0)}},
    ]
    facility_rows = [r for r in planner.rows() if r[1]["group_by"] == "facility"]
    assert facility_rows == [
        ("allocated", {"group_by": "facility", "group": "f1", "resource": "cpu"}, 1000.0),
        ("demand", {"group_by": "facility", "group": "f1", "resource": "cpu"}, 2000.0),
        ("allocated", {"group_by": "facility", "group": "f2", "resource": "cpu"}, 0.0),
        ("demand", {"group_by": "facility", "group": "f2", "resource": "cpu"}, 5000.0),
    ]
    assert planner.rows in planner.history.sources  # recorded with every sample


def test_a_window_is_read_from_rollups_then_the_raw_samples_after_them(
    services: Services,
) -> None:
    clock = Clock(T0)
    planner = _planner(services, clock)

    async def scenario() -> None:
        ledger, history = services.ledger, planner.history
        await ledger.register_node(Node("a1", {"cpu": 4000}, labels={"facility": "f1"}))
        held = await ledger.grant({"cpu": 2000}, node="a1", owner="alice")
        for minute in range(5):  # 2 cpu for the first five minutes
            clock.now = T0 + 60 * minute
            await history.tick()
        await ledger.release(held.id, ReleaseReason.COMPLETED)
        await ledger.grant({"cpu": 1000}, node="a1", owner="alice")
        clock.now = T0 + 300  # closes the first step: rolled up
        await history.tick()
        clock.now = T0 + 330

    asyncio.run(scenario())
    series = planner.read("facility", T0 - 1)
    # One point for the rolled-up step (its mean), then the raw sample after it.
    assert series["allocated"] == {("f1", "cpu"): [(T0, 2000.0), (T0 + 300, 1000.0)]}
    answer = planner.utilization("facility", 600.0)
    [group] = answer["groups"]
    cpu = group["resources"]["cpu"]
    assert (cpu["total"], cpu["allocated"], cpu["allocated_share"]) == ("4", "1", 0.25)
    assert cpu["window"] == {
        "samples": 2,
        "allocated_mean_base": 1500.0,
        "allocated_peak_base": 2000.0,
        "allocated_mean_share": 0.375,
        "allocated_peak_share": 0.5,
        "demand_mean_base": 1500.0,
        "demand_peak_base": 2000.0,
        "demand_peak_share": 0.5,
    }
    with pytest.raises(InvalidInput, match="window_seconds: from 1 to 3600"):
        planner.utilization("facility", 7200.0)
    with pytest.raises(InvalidInput, match="group_by: 'zone' is not one of resource, facil"):
        planner.utilization("zone", 600.0)


def test_exhaustion_forecasts_reach_the_alerts_service(services: Services, tmp_path: Path) -> None:
    now = 1_700_000_000.0
    seed_history(tmp_path / "apportion.db", now)  # tx's 8 gpus run out in ~101.5 h
    planner = PlanningService(
        services.ledger,
        services.jobs,
        services.history,
        services.alerts,
        PlanningSettings(),
        clock=Clock(now),
    )

    async def scenario() -> None:
        await services.ledger.register_node(Node("g1", {"gpu": 8}, labels={"facility": "tx"}))
        await services.ledger.register_node(Node("c1", {"cpu": 4000}, labels={"facility": "oslo"}))
        found = await planner.update_alerts()
        assert [(f.facility, f.resource) for f in found] == [("oslo", "cpu"), ("tx", "gpu")]
        oslo, tx = found
        assert oslo.exhausted_in_s is None  # no history: no date
        # The history reaches 8 gpus 101.53 h from now (planning_support.ramp).
        assert tx.exhausted_in_s == pytest.approx(101.53 * 3600, abs=0.25 * 3600)
        assert services.alerts.forecasts == found
        assert planner.last_alert_forecast_at == now

    asyncio.run(scenario())


def test_planning_settings_name_the_key_that_is_wrong() -> None:
    assert PlanningSettings.from_config({"history_days": 7}, interval_s=60) == PlanningSettings(
        60.0, 7.0
    )
    with pytest.raises(InvalidInput, match=r"planning\.every: unknown key"):
        PlanningSettings.from_config({"every": 5})
    with pytest.raises(InvalidInput, match=r"planning\.history_days: from 1 to 90"):
        PlanningSettings.from_config({"history_days": 365})
