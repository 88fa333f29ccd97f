"""Metric history (``service/history_service.py``): what one sample records
from memory, each instant stored once whichever server writes it, rollups
per closed step with raw samples pruned past their horizon, and series
answered from raw samples or rollups. The store part runs on SQLite and
PostgreSQL: "insert, ignore a conflict" and JSON labels differ by dialect."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from apportion.core.history import Retention
from apportion.core.model import Node
from apportion.exceptions import InvalidInput
from apportion.service.history_service import HistoryService, HistorySettings
from apportion.service.wiring import Services
from apportion.store.schema import history_samples
from support import Clock

T0 = 1_700_000_100.0
"""A multiple of the 300 s rollup step."""
SETTINGS = HistorySettings(
    60.0, Retention(raw_s=600.0, rollup_step_s=300.0, rollup_s=3600.0, max_points=1000)
)
CLUSTER_CPU = ("utilization", {"resource": "cpu"})
NODE_CPU = ("utilization", {"node": "n1", "facility": "f1", "resource": "cpu"})


def _history(s: Services, clock: Clock) -> HistoryService:
    """As ``wiring.build`` makes it (without the planner's extra series)."""
    return HistoryService(s.uow.engine, s.ledger, s.jobs, SETTINGS, clock=clock)


def test_a_sample_records_utilization_per_node_facility_and_cluster_and_the_queues(
    services: Services,
) -> None:
    clock = Clock(T0)

    async def scenario() -> list[Any]:
        ledger, jobs = services.ledger, services.jobs
        await ledger.register_node(Node("n1", {"cpu": 4000}, labels={"facility": "f1"}))
        await ledger.register_node(Node("n2", {"cpu": 2000}, labels={"facility": "f1"}))
        await ledger.register_node(Node("n3", {"cpu": 2000, "gpu": 0}))
        await ledger.grant({"cpu": 1000}, node="n1", owner="a")
        await ledger.grant({"cpu": 1000}, node="n2", owner="b")
        await jobs.put_queue("team-a", {}, 1.0, None, None)
        first = await jobs.submit({"resources": {"cpu": "1"}, "queue": "team-a"}, "a")
        await jobs.submit({"resources": {"cpu": "1"}, "queue": "team-a"}, "a")
        clock.now = first.submit_time + 45.0
        return _history(services, clock).snapshot()

    rows = asyncio.run(scenario())
    assert rows == [
        ("utilization", {"node": "n1", "facility": "f1", "resource": "cpu"}, 0.25),
        ("utilization", {"node": "n2", "facility": "f1", "resource": "cpu"}, 0.5),
        ("utilization", {"node": "n3", "facility": "", "resource": "cpu"}, 0.0),
        ("utilization", {"facility": "", "resource": "cpu"}, 0.0),
        ("utilization", {"facility": "f1", "resource": "cpu"}, pytest.approx(2 / 6)),
        ("utilization", {"resource": "cpu"}, 0.25),
        ("queue_length", {"queue": "default"}, 0.0),
        ("queue_wait_seconds", {"queue": "default"}, 0.0),
        ("queue_length", {"queue": "team-a"}, 2.0),
        ("queue_wait_seconds", {"queue": "team-a"}, 45.0),
    ]


def test_samples_are_stored_once_rolled_up_pruned_and_answered(
    servers: Callable[..., Services], store_url: str
) -> None:
    clock = Clock(T0)
    server = servers("a", store_url)
    history, other = _history(server, clock), _history(server, clock)
    for i in range(10):  # one sample a minute, values exact in binary
        history.write_samples(T0 + 60 * i, [(*CLUSTER_CPU, i * 0.125)])
    # Another server records an instant already stored: the first value stays.
    other.write_samples(T0, [(*CLUSTER_CPU, 0.99), (*NODE_CPU, 0.5)])

    clock.now = T0 + 600
    # Two closed steps of the cluster series, one of the node's.
    assert history.maintain(clock.now) == 3
    assert history.maintain(clock.now) == 0

    recent = history.query("utilization", {}, window_s=300.0)
    assert (recent["source"], recent["step"], recent["truncated"]) == ("raw", 60.0, False)
    [cpu] = recent["series"]
    assert cpu["labels"] == {"resource": "cpu"}
    assert cpu["points"] == [[T0 + 60 * i, i * 0.125] for i in range(6, 10)]
    assert (cpu["last"], cpu["trend"]["direction"]) == (1.125, "increasing")

    rolled = history.query("utilization", {}, window_s=1200.0)
    assert (rolled["source"], rolled["step"]) == ("rollup", 300.0)
    assert rolled["series"][0]["points"] == [[T0, 0.25], [T0 + 300, 0.875]]

    # The samples at T0 are past the raw horizon (600 s) and are gone.
    with server.uow.engine.connect() as conn:
        kept = conn.execute(sa.select(history_samples.c.at).order_by(history_samples.c.at))
        assert [at for (at,) in kept] == [T0 + 60 * i for i in range(1, 10)]

    # A filter on node picks the per-node series, not the cluster's.
    nodes = history.query("utilization", {"node": "*"}, window_s=1200.0)
    assert [s["labels"] for s in nodes["series"]] == [NODE_CPU[1]]
    assert nodes["series"][0]["points"] == [[T0, 0.5]]


def test_a_query_names_what_is_wrong_with_it(services: Services) -> None:
    history = _history(services, Clock(T0))
    with pytest.raises(InvalidInput, match="metric: unknown metric 'load'; known: allocated"):
        history.query("load", {}, window_s=60.0)
    with pytest.raises(InvalidInput, match="window_seconds: history is kept 3600 s"):
        history.query("utilization", {}, window_s=7200.0)
    with pytest.raises(InvalidInput, match="step: at least"):
        history.query("utilization", {}, window_s=3600.0, step_s=0.001)
    with pytest.raises(InvalidInput, match=r"history\.interval_s: must be a positive number"):
        HistorySettings(0.0)
