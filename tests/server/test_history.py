"""Metric history: the service on a real store (SQLite, then PostgreSQL) with
a fake clock (sampling, rollups, retention, bounds, trends), then ``GET
/api/v1/history`` on a real server sampling every 0.2 s, on each backend."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from apportion.core.history import Retention
from apportion.core.ledger import Ledger
from apportion.core.model import Node
from apportion.exceptions import InvalidInput
from apportion.service.history_service import HistoryService, HistorySettings
from apportion.service.settings import Settings
from apportion.store.database import create_engine, migrate
from apportion.store.schema import history_rollups, history_samples, history_series
from server.helpers import Serve, until
from support import Clock, ServerProcess

T0 = 1_699_999_200.0  # a whole hour: buckets line up with the samples


@pytest.fixture
def engine(store_url: str) -> Iterator[sa.Engine]:
    """A migrated store of each backend: two writers must agree on both."""
    engine = create_engine(store_url, sqlite_synchronous="OFF")
    migrate(engine)
    try:
        yield engine
    finally:
        engine.dispose()


def _cluster() -> tuple[Ledger, Any]:
    ledger = Ledger()
    ledger.add_node(Node("g1", {"cpu": 10_000, "gpu": 4}, labels={"facility": "tx"}))
    ledger.add_node(Node("g2", {"cpu": 10_000, "gpu": 4}, labels={"facility": "tx"}))
    ledger.add_node(Node("c1", {"cpu": 40_000}, labels={"facility": "oslo"}))
    jobs = SimpleNamespace(queues={"default": None, "batch": None}, live={})
    return ledger, jobs


def _service(engine: sa.Engine, clock: Clock, settings: HistorySettings) -> HistoryService:
    ledger, jobs = _cluster()
    return HistoryService(
        engine,
        ledger,
        jobs,  # type: ignore[arg-type]
        settings,
        clock=clock,
    )


def _run(service: HistoryService, clock: Clock, seconds: float, grant_every: int = 0) -> None:
    """Sample every interval for ``seconds``, granting 1 cpu on c1 every
    ``grant_every`` samples (a rising utilization), maintaining as it goes."""
    ledger = service.ledger
    interval = service.settings.interval_s
    steps = int(seconds / interval)
    for i in range(steps):
        if grant_every and i % grant_every == 0:
            ledger.grant(uuid.uuid4().hex, {"cpu": 1000}, now=clock.now, node="c1")
        service.write_samples(clock.now, service.snapshot())
        clock.now += interval
        service.maintain(clock.now)


def _count(engine: sa.Engine, table: sa.Table) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def test_samples_roll_up_and_age_out_within_bounds(engine: sa.Engine) -> None:
    clock = Clock(T0)
    settings = HistorySettings(
        10.0, Retention(raw_s=600, rollup_step_s=60, rollup_s=3600, max_points=10_000)
    )
    service = _service(engine, clock, settings)
    _run(service, clock, 1800, grant_every=6)  # +1 cpu on c1 each minute, for 30 minutes

    series = _count(engine, history_series)
    # utilization: 5 node/resource + 3 facility/resource + 2 cluster; 2 queues x 2 metrics
    assert series == 5 + 3 + 2 + 4
    with engine.connect() as conn:
        oldest = conn.execute(sa.select(sa.func.min(history_samples.c.at))).scalar_one()
        rows = conn.execute(sa.select(history_rollups)).all()
    assert oldest > clock.now - 600 - 60  # older than raw_s: pruned at each rollup step
    assert _count(engine, history_samples) <= series * 61
    # Every closed minute is rolled up once, from its 6 samples.
    assert {r.count for r in rows} == {6}
    assert len(rows) == series * 30

    # The last 5 minutes come from raw samples: c1's cpu rises 1 of 40 cpus a minute.
    recent = service.query("utilization", {"node": "c1", "resource": "cpu"}, window_s=300)
    assert recent["source"] == "raw" and recent["step"] == 10
    [c1] = recent["series"]
    assert c1["labels"] == {"node": "c1", "facility": "oslo", "resource": "cpu"}
    assert len(c1["points"]) == 29  # (now - 300, now], one every 10 s
    assert c1["last"] == pytest.approx(30 / 40)
    assert c1["trend"]["direction"] == "increasing"
    assert c1["trend"]["slope_per_hour"] == pytest.approx(60 / 40, rel=0.1)

    # A window longer than raw_s comes from the 1-minute rollups.
    whole = service.query("utilization", {"facility": "oslo", "resource": "cpu"}, window_s=1800)
    assert whole["source"] == "rollup" and whole["step"] == 60
    [oslo] = whole["series"]
    assert oslo["labels"] == {"facility": "oslo", "resource": "cpu"}
    assert len(oslo["points"]) == 30
    assert [v for _, v in oslo["points"]][:3] == pytest.approx([1 / 40, 2 / 40, 3 / 40])
    assert oslo["trend"]["direction"] == "increasing"
    flat = service.query("utilization", {"resource": "gpu"}, window_s=1800)
    assert [s["trend"]["direction"] for s in flat["series"]] == ["stable"]
    assert flat["series"][0]["labels"] == {"resource": "gpu"}

    # Two hours later, with no samples in between, everything has aged out.
    clock.now += 7200
    service.maintain(clock.now)
    assert _count(engine, history_samples) == 0
    assert _count(engine, history_rollups) == 0


def test_max_points_bounds_each_series(engine: sa.Engine) -> None:
    clock = Clock(T0)
    settings = HistorySettings(
        1.0, Retention(raw_s=86400, rollup_step_s=10, rollup_s=86400, max_points=20)
    )
    service = _service(engine, clock, settings)
    _run(service, clock, 300)
    series = _count(engine, history_series)
    # 20 points a series at most: raw is kept 20 s, rollups 200 s.
    assert _count(engine, history_samples) <= series * 21
    assert _count(engine, history_rollups) <= series * 21
    with pytest.raises(InvalidInput, match="window_seconds"):
        service.query("utilization", {}, window_s=1000)


def test_levels_filters_and_two_writers(engine: sa.Engine) -> None:
    clock = Clock(T0)
    settings = HistorySettings(10.0, Retention(raw_s=600, rollup_step_s=60, rollup_s=3600))
    service = _service(engine, clock, settings)
    other = _service(engine, clock, settings)  # a second server on the same store
    for _ in range(3):
        service.write_samples(clock.now, service.snapshot())
        other.write_samples(clock.now, other.snapshot())
        clock.now += 10
    per_series = 3  # each instant once, whoever wrote it first
    assert _count(engine, history_samples) == _count(engine, history_series) * per_series

    def labels(**filters: str) -> list[dict[str, str]]:
        answer = service.query("utilization", filters, window_s=600)
        return [s["labels"] for s in answer["series"]]

    assert labels(resource="cpu") == [{"resource": "cpu"}]
    assert [x["facility"] for x in labels(resource="cpu", facility="*")] == ["oslo", "tx"]
    assert [x["node"] for x in labels(resource="cpu", node="*")] == ["c1", "g1", "g2"]
    assert [x["node"] for x in labels(resource="gpu", node="*", facility="tx")] == ["g1", "g2"]
    assert labels(node="g1", resource="gpu") == [
        {"facility": "tx", "node": "g1", "resource": "gpu"}
    ]
    assert labels(node="nope") == []
    queues = service.query("queue_length", {"queue": "*"}, window_s=600)["series"]
    assert [s["labels"]["queue"] for s in queues] == ["batch", "default"]
    assert (
        service.query("utilization", {"resource": "cpu"}, window_s=600, limit=1)["truncated"]
        is False
    )
    assert service.query("utilization", {"node": "*"}, window_s=600, limit=2)["truncated"]
    with pytest.raises(InvalidInput, match="unknown metric"):
        service.query("temperature", {}, window_s=600)
    with pytest.raises(InvalidInput, match="step"):
        service.query("utilization", {}, window_s=600, step_s=0.01)


def test_settings_from_the_config_file_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "server.toml"
    config.write_text("[history]\ninterval_s = 30\nrollup_s = 864000\n")
    monkeypatch.setenv("APPORTION_HISTORY_RAW", "7200")
    env = Settings.from_env()
    settings = HistorySettings.load(config, {"raw_s": env.history_raw_s})
    assert settings.interval_s == 30
    assert settings.retention.rollup_s == 864000 and settings.retention.raw_s == 7200
    assert HistorySettings.load(None).retention.rollup_s == 90 * 86400
    with pytest.raises(InvalidInput, match=r"history\.nope"):
        config.write_text("[history]\nnope = 1\n")
        HistorySettings.load(config)
    monkeypatch.setenv("APPORTION_HISTORY_INTERVAL", "soon")
    with pytest.raises(
        InvalidInput, match="APPORTION_HISTORY_INTERVAL: Input should be a valid number"
    ):
        Settings.from_env()


# -- the API -------------------------------------------------------------------------------


@pytest.fixture
def sampled(serve: Serve, backend_url: str | None) -> ServerProcess:
    return serve(
        {"APPORTION_HISTORY_INTERVAL": "0.2", "APPORTION_HISTORY_ROLLUP_STEP": "1"},
        database_url=backend_url,
    )


def _oslo_cpu(api: httpx.Client) -> dict[str, Any]:
    r = api.get(
        "/api/v1/history",
        params={
            "metric": "utilization",
            "resource": "cpu",
            "facility": "oslo",
            "window_seconds": 30,
        },
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _second_b1(api: httpx.Client) -> float | None:
    """b1's cpu utilization in the latest one-second step."""
    r = api.get(
        "/api/v1/history",
        params={
            "metric": "utilization",
            "node": "b1",
            "resource": "cpu",
            "window_seconds": 30,
            "step": 1,
        },
    )
    assert r.status_code == 200, r.text
    series = r.json()["series"]
    return series[0]["points"][-1][1] if series and series[0]["points"] else None


def test_history_api_answers_series_with_trends(sampled: ServerProcess) -> None:
    with sampled.client() as api:
        for name, facility in (("a1", "tx"), ("a2", "tx"), ("b1", "oslo")):
            node = {
                "name": name,
                "resources": {"cpu": "10", "gpu": 2},
                "labels": {"facility": facility},
            }
            assert api.post("/api/v1/nodes", json=node).status_code == 201
        # Utilization rises: each grant is alone in a one-second step (all
        # its samples taken after it) before the next, so the steps rise.
        for k in range(1, 5):
            r = api.post("/api/v1/allocations", json={"resources": {"cpu": "2"}, "node": "b1"})
            assert r.status_code == 201
            until(
                lambda k=k: _second_b1(api) == pytest.approx(k / 5),
                what=f"a step of {2 * k} cpus granted on b1",
            )

        body = _oslo_cpu(api)
        assert body["source"] == "raw" and body["step"] >= 0.2
        [oslo] = body["series"]
        assert oslo["labels"] == {"facility": "oslo", "resource": "cpu"}
        assert len(oslo["points"]) >= 5
        assert oslo["last"] == pytest.approx(0.8)
        assert oslo["trend"]["direction"] == "increasing"
        assert oslo["trend"]["slope_per_s"] > 0

        nodes = api.get(
            "/api/v1/history",
            params={
                "metric": "utilization",
                "node": "*",
                "resource": "cpu",
                "window_seconds": 30,
                "step": 1,
            },
        ).json()
        assert [s["labels"]["node"] for s in nodes["series"]] == ["a1", "a2", "b1"]
        assert nodes["step"] == 1
        assert [s["trend"]["direction"] for s in nodes["series"]] == [
            "stable",
            "stable",
            "increasing",
        ]
        queue = api.get(
            "/api/v1/history", params={"metric": "queue_length", "queue": "default"}
        ).json()
        assert queue["series"][0]["last"] == 0

        for params, field in (
            ({"metric": "temperature"}, "metric"),
            ({"metric": "utilization", "window_seconds": -1}, "window_seconds"),
            ({"metric": "utilization", "window_seconds": 1e9}, "window_seconds"),
            ({"metric": "utilization", "step": "nan"}, "step"),
        ):
            bad = api.get("/api/v1/history", params=params)
            assert bad.status_code == 422, (params, bad.text)
            assert field in bad.text
    assert (
        httpx.get(sampled.url + "/api/v1/history", params={"metric": "utilization"}).status_code
        == 401
    )
