"""Capacity planning: the service on a real SQLite store with a fake clock
(forecast models, back-test, exhaustion, the alert feed, bad parameters),
then the routes on a real server whose store holds three weeks of history."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from apportion.core.alerts import forecast_conditions
from apportion.core.history import Retention
from apportion.core.ledger import Ledger
from apportion.core.model import Node
from apportion.exceptions import InvalidInput
from apportion.service.alerts_service import AlertSettings
from apportion.service.history_service import HistoryService, HistorySettings
from apportion.service.planning_service import PlanningService, PlanningSettings, choose_step
from apportion.service.server_config import load_server_config
from planning_support import LABELS, add_tx_gpus, ramp, start_seeded_server
from server.helpers import config_env, until
from support import Clock, ServerProcess

NOW = 1_699_963_200.0  # 2023-11-14 12:00 UTC, a whole hour


def _planner(engine: sa.Engine, clock: Clock, alerts: Any = None) -> PlanningService:
    ledger = Ledger()
    for name in ("g1", "g2"):
        ledger.add_node(Node(name, {"cpu": 8000, "gpu": 4},
                             labels={"facility": "tx", "type": "gpu"}))
    ledger.add_node(Node("c1", {"cpu": 40_000}, labels={"facility": "oslo", "type": "cpu"}))
    jobs = SimpleNamespace(queues={}, live={})
    settings = HistorySettings(3600.0, Retention(raw_s=30 * 86400.0, rollup_step_s=3600.0))
    history = HistoryService(engine, ledger, jobs,  # type: ignore[arg-type]
                             settings, clock=clock)
    return PlanningService(ledger, jobs, history,  # type: ignore[arg-type]
                           alerts, PlanningSettings(history_days=21), clock=clock).install()


def _record_ramp(planner: PlanningService, hours: int = 21 * 24) -> None:
    for h in range(-hours, 1):
        planner.history.write_samples(NOW + h * 3600, [
            ("allocated", LABELS, ramp(h)), ("demand", LABELS, ramp(h) + 1.0)])


def test_forecast_picks_a_seasonal_model_backtests_it_and_dates_exhaustion(
        engine: sa.Engine) -> None:
    clock = Clock(NOW)
    planner = _planner(engine, clock)
    _record_ramp(planner)

    answer = planner.forecast(days=7, group_by="facility")
    assert answer["step_seconds"] == 3600
    by_key = {(f["group"], f["resource"]): f for f in answer["forecasts"]}
    assert sorted(by_key) == [("oslo", "cpu"), ("tx", "cpu"), ("tx", "gpu")]
    gpu = by_key[("tx", "gpu")]
    assert gpu["capacity"] == "8" and gpu["capacity_base"] == 8
    allocated = gpu["allocated"]
    assert allocated["model"] == "holt_winters_daily"
    assert allocated["seasonal"] is True
    assert allocated["history_points"] == 505
    # Noise-free: the back-test error is nil (the last 126 hours held back).
    assert allocated["backtest"]["holdout_points"] == 126
    assert allocated["backtest"]["mape_percent"] == pytest.approx(0.0, abs=0.01)
    # The truth reaches 8 gpus 101.53 h from now; the forecast says 101.74 h.
    assert allocated["exhaustion_in_hours"] == pytest.approx(101.74, abs=0.1)
    assert allocated["exhaustion_at"] == "2023-11-18T17:44:39Z"
    assert len(allocated["points"]) == 7 * 24
    assert allocated["columns"] == ["t", "mean", "lo80", "hi80", "lo95", "hi95"]
    assert allocated["history"][-1] == [NOW, 5.0]
    # Demand runs one gpu above: today's crest already reaches capacity
    # (the truth: 5.15 h from now).
    assert gpu["demand"]["exhaustion_in_hours"] == pytest.approx(5.23, abs=0.1)
    # Nothing recorded for oslo: the answer says so instead of guessing.
    oslo = by_key[("oslo", "cpu")]["allocated"]
    assert oslo["model"] == "insufficient_history"
    assert oslo["exhaustion_at"] is None and oslo["backtest"] is None

    # A week of history is too short for seasons: a simpler model, and why.
    short = _planner(engine, clock).forecast(days=7, group_by="facility", group="tx",
                                             resource="gpu", history_days=1, points=False)
    [entry] = short["forecasts"]
    assert entry["allocated"]["model"] in ("ewma", "linear_trend")
    assert entry["allocated"]["seasonal"] is False
    assert "season" in entry["allocated"]["reason"]
    assert "points" not in entry["allocated"]


def test_exhaustion_feeds_the_forecast_alert(engine: sa.Engine) -> None:
    clock = Clock(NOW)
    alerts = SimpleNamespace(settings=AlertSettings(), forecasts=[])
    planner = _planner(engine, clock, alerts)
    _record_ramp(planner)
    import asyncio

    found = asyncio.run(planner.update_alerts())
    assert {(f.facility, f.resource) for f in found} == {("tx", "gpu"), ("tx", "cpu"),
                                                         ("oslo", "cpu")}
    assert alerts.forecasts == found
    [condition] = forecast_conditions(alerts.forecasts, 7 * 86400.0, critical_s=86400.0)
    assert condition.labels == {"facility": "tx", "resource": "gpu"}
    assert condition.severity.value == "warning"
    assert "forecast to run out in 101.7 h" in condition.message


def test_utilization_reports_the_window_and_bad_parameters_name_the_field(
        engine: sa.Engine) -> None:
    clock = Clock(NOW)
    planner = _planner(engine, clock)
    _record_ramp(planner, hours=24)
    answer = planner.utilization("facility", 6 * 3600)
    tx = next(g for g in answer["groups"] if g["group"] == "tx")
    gpu = tx["resources"]["gpu"]
    assert (gpu["total_base"], gpu["allocated_base"], gpu["pending_base"]) == (8, 0, 0)
    window = gpu["window"]
    assert window["samples"] == 7  # hours -6 .. 0
    # The swing rises through the window from its trough (2.94) to 5 now.
    assert window["allocated_peak_base"] == 5.0
    assert window["demand_peak_base"] == 6.0
    assert window["allocated_peak_share"] == 0.625

    for call, field in (
        (lambda: planner.forecast(days=0, group_by="facility"), "days"),
        (lambda: planner.forecast(days=91, group_by="facility"), "days"),
        (lambda: planner.forecast(days=7, group_by="zone"), "group_by"),
        (lambda: planner.forecast(days=7, group_by="type", history_days=0.5), "history_days"),
        (lambda: planner.utilization("facility", 0), "window_seconds"),
    ):
        with pytest.raises(InvalidInput) as info:
            call()
        assert info.value.data["field"] == field
    with pytest.raises(InvalidInput, match="days: from 1 to 90"):
        planner.forecast(days=120, group_by="resource")


def test_the_step_keeps_each_forecast_small() -> None:
    assert choose_step(35 * 86400, 7 * 86400, 60) == 3600
    assert choose_step(2 * 86400, 86400, 60) == 300
    assert choose_step(90 * 86400, 90 * 86400, 60) == 21_600
    assert choose_step(3600, 86400, 3600) == 3600


def test_planning_section_of_the_server_config(tmp_path: Path) -> None:
    path = tmp_path / "server.toml"
    path.write_text("[planning]\ninterval_s = 30\nhistory_days = 14\n")
    assert load_server_config(path).planning == PlanningSettings(30.0, 14.0)
    path.write_text("[planning]\nhistory_days = 200\n")
    with pytest.raises(InvalidInput, match=r"planning\.history_days: from 1 to 90"):
        load_server_config(path)
    path.write_text("[planning]\ncadence = 3\n")
    with pytest.raises(InvalidInput, match=r"planning\.cadence: unknown key"):
        load_server_config(path)


# -- the routes on a real server --------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    def prepare(api: httpx.Client) -> None:
        add_tx_gpus(api, cpu=16)
        # Fits nowhere now (3 gpus are free): it waits.
        r = api.post("/api/v1/jobs", json={"name": "big", "resources": {"gpu": 4}})
        assert r.status_code == 201, r.text

    proc = start_seeded_server(
        lambda: tmp_path_factory.mktemp("planning"),
        lambda data: config_env(data, "[planning]\ninterval_s = 1\nhistory_days = 21\n\n"
                                      "[alerts]\ninterval_s = 0.5\n"),
        prepare)
    try:
        yield proc
    finally:
        proc.stop()


def test_utilization_route_counts_what_waits(server: ServerProcess) -> None:
    with server.client() as api:
        r = api.get("/api/v1/capacity/utilization",
                    params={"group_by": "facility", "window_seconds": 600})
    assert r.status_code == 200, r.text
    [tx] = r.json()["groups"]
    gpu = tx["resources"]["gpu"]
    assert (gpu["total"], gpu["allocated"], gpu["pending"]) == ("8", "5", "4")
    assert gpu["demand_base"] == 9 and gpu["demand_share"] == 1.125
    assert tx["resources"]["cpu"]["pending_base"] == 0


def test_forecast_route_and_its_alert(server: ServerProcess) -> None:
    with server.client() as api:
        def sampled() -> Any:
            # The server's own samples (5 gpus allocated, 9 wanted) have come
            # in: the current hour has a point and demand is 9 now. The hour's
            # mean may stay a little under 9 for good: a sample the server
            # took while the fixture was still posting counts in it.
            r = api.get("/api/v1/capacity/forecast", params={
                "group_by": "facility", "days": 7, "resource": "gpu"})
            assert r.status_code == 200, r.text
            answer = r.json()
            [gpu] = answer["forecasts"]
            last_t, last_demand = gpu["demand"]["history"][-1]
            fresh = last_t >= time.time() // 3600 * 3600 - 1
            return answer if (fresh and gpu["now"]["demand_base"] == 9
                              and last_demand > 8.2) else None

        answer = until(sampled, 90, "samples of demand", every=0.2)
        assert answer["step_seconds"] == 3600
        [gpu] = answer["forecasts"]
        allocated = gpu["allocated"]
        assert allocated["model"] == "holt_winters_daily"
        assert allocated["backtest"]["mape_percent"] < 1.0
        assert 95 <= allocated["exhaustion_in_hours"] <= 108
        # A job waits for 4 gpus: demand (9) is past capacity already.
        assert gpu["demand"]["exhaustion_in_hours"] == 0

        def firing() -> Any:
            alerts = api.get("/api/v1/alerts", params={"state": "firing"}).json()["alerts"]
            return [a for a in alerts if a["rule"] == "forecast_exhaustion"]

        [alert] = until(firing, 60, "the forecast_exhaustion alert", every=0.2)
        assert alert["labels"] == {"facility": "tx", "resource": "gpu"}

        for params, field in (({"days": 0}, "days"), ({"days": 91}, "days"),
                              ({"group_by": "zone"}, "group_by"),
                              ({"history_days": 100}, "history_days")):
            r = api.get("/api/v1/capacity/forecast", params=params)
            assert r.status_code == 422, r.text
            assert r.json()["details"][0]["field"] == f"query.{field}", r.text
        r = api.get("/api/v1/capacity/forecast", params={"days": 91})
        assert "less than or equal to 90" in r.json()["message"]
    assert httpx.get(server.url + "/api/v1/capacity/forecast").status_code == 401
