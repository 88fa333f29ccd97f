"""Prometheus metrics (``service/metrics.py``): state gauges read from memory
at scrape time (in Prometheus units: cpu in cores), and counters counted
from the event log as the event hub tails it, each server counting only
the events it wrote itself, so that a sum over servers is the cluster's."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from apportion.core.model import Node, ReleaseReason
from apportion.service.wiring import Services


def _scrape(server: Services) -> dict[str, float]:
    """Every sample of a scrape by its name and labels, as Prometheus reads it."""
    text = server.metrics.render(server.metrics.snapshot()).decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_a_scrape_tells_what_memory_holds_in_prometheus_units(services: Services) -> None:
    async def scenario() -> None:
        ledger, jobs = services.ledger, services.jobs
        gib = 1 << 30
        await ledger.register_node(
            Node("n1", {"cpu": 4000, "memory": 8 * gib}, labels={"facility": "f1"})
        )
        await ledger.register_node(Node("n2", {"cpu": 4000}, labels={"facility": "f1"}))
        await ledger.grant({"cpu": 1500, "memory": 2 * gib}, node="n1", owner="alice")
        await jobs.put_queue("team-a", {}, 1.0, None, None)
        await jobs.submit({"resources": {"cpu": "1"}, "queue": "team-a"}, "bob")

    asyncio.run(scenario())
    s = _scrape(services)
    assert s['apportion_node_capacity{node="n1",facility="f1",resource="cpu",unit="cores"}'] == 4.0
    assert s['apportion_node_allocated{node="n1",facility="f1",resource="cpu",unit="cores"}'] == 1.5
    assert s[
        'apportion_node_allocated{node="n1",facility="f1",resource="memory",unit="bytes"}'
    ] == (2 * (1 << 30))
    assert s['apportion_facility_capacity{facility="f1",resource="cpu",unit="cores"}'] == 8.0
    assert s['apportion_facility_utilization_ratio{facility="f1",resource="cpu"}'] == 0.1875
    assert s['apportion_cluster_utilization_ratio{resource="memory"}'] == 0.25
    assert s['apportion_nodes{state="ready",health="healthy"}'] == 2.0
    assert s['apportion_nodes{state="down",health="healthy"}'] == 0.0
    assert s["apportion_allocations_active"] == 1.0
    assert s['apportion_queue_pending_jobs{queue="team-a"}'] == 1.0
    assert s['apportion_queue_pending_jobs{queue="default"}'] == 0.0
    assert s['apportion_jobs{state="pending"}'] == 1.0
    assert not any(k.startswith("apportion_alerts_firing{") for k in s)  # none evaluated


def test_counters_count_the_events_this_server_wrote(servers: Callable[..., Services]) -> None:
    a, b = servers("a"), servers("b")

    async def scenario() -> None:
        await a.leadership.campaign_round()
        try:
            await a.ledger.register_node(Node("n1", {"cpu": 8000}))
            first = await a.ledger.grant({"cpu": 1000}, node="n1", owner="alice")
            await a.ledger.grant({"cpu": 1000}, node="n1", owner="alice")
            await a.ledger.release(first.id, ReleaseReason.COMPLETED)
            job = await a.jobs.submit({"resources": {"cpu": "1"}}, "bob")
            await a.jobs.run_cycle()
            await a.jobs.complete(job.id, succeeded=True, exit_code=0)
            await b.follower.sync()
            await b.ledger.grant({"cpu": 500}, node="n1", owner="carol")  # b's own
            for server in (a, b):
                while await server.hub.poll():
                    pass
        finally:
            await a.leadership.stop()

    asyncio.run(scenario())
    mine, theirs = _scrape(a), _scrape(b)
    # Two plain grants and the job's task's; one release of each reason.
    assert mine["apportion_allocations_granted_total"] == 3.0
    assert mine['apportion_allocations_released_total{reason="completed"}'] == 2.0
    assert mine['apportion_jobs_finished_total{state="succeeded"}'] == 1.0
    assert mine['apportion_jobs_finished_total{state="failed"}'] == 0.0
    assert mine['apportion_queue_wait_seconds_count{queue="default"}'] == 1.0
    assert mine['apportion_events_total{kind="job.submitted"}'] == 1.0
    assert mine["apportion_scheduling_cycle_duration_seconds_count"] == 1.0
    assert "apportion_scheduling_collection_duration_seconds_count" in mine
    assert theirs["apportion_allocations_granted_total"] == 1.0
    assert 'apportion_jobs_finished_total{state="succeeded"}' in theirs
    assert theirs['apportion_jobs_finished_total{state="succeeded"}'] == 0.0
