"""Pools as capacity to come, against a real server process: a job that only
a pool's node could hold (its labels) is accepted and waits for the pool,
which then advises adding the node; a job no node and no pool could ever
hold is still refused, naming the constraint; and a pool whose recorded
history says a peak is coming is scaled up before it, the reason in words.

The server reads a providers file (APPORTION_PROVIDERS_FILE) with two
``advice`` pools of a local provider whose nodes, were one ever started,
would exit at once."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa

from apportion.core.ledger import Ledger
from apportion.service.history_service import HistoryService, HistorySettings
from apportion.store.database import create_engine, migrate
from apportion.store.schema import history_rollups, history_series
from server.helpers import config_env, until
from support import ServerProcess

PROVIDERS = """
[providers.lab]
kind = "local"
state_dir = {state_dir}
command = ["{{python}}", "-c", "raise SystemExit(3)"]

[[providers.lab.node_types]]
name = "c4"
resources = {{ cpu = "4", memory = "8Gi" }}
price_per_hour = 0.5

[[pools]]
name = "burst"
provider = "lab"
node_type = "c4"
max_size = 4
mode = "advice"
labels = {{ facility = "burst" }}

[[pools]]
name = "ahead"
provider = "lab"
node_type = "c4"
max_size = 4
mode = "advice"
"""

SERVER = """
[scaling]
interval_s = 0.3
forecast_lookahead_s = 7200

[planning]
interval_s = 1
history_days = 21
"""

DAYS = 21
PEAK = 3600
"""Millicores the ``ahead`` pool's one node (4 cpu) held, the same two hours
every day; the next two hours from the test's start are such hours."""


def busy(h: int) -> float:
    """The ``ahead`` pool's allocated cpu, ``h`` hours after the start hour."""
    return float(PEAK) if h % 24 in (1, 2) else 0.0


def seed_pool_history(db: Path, start: float) -> None:
    """Three weeks of hourly rollups of ``busy`` for pool ``ahead``, as a
    server recording the pool grouping would have stored them."""
    engine = create_engine(f"sqlite:///{db}", sqlite_synchronous="OFF")
    labels = {"group_by": "pool", "group": "ahead", "resource": "cpu"}
    try:
        migrate(engine)
        history = HistoryService(engine, SimpleNamespace(ledger=Ledger()),  # type: ignore[arg-type]
                                 SimpleNamespace(queues={}, live={}),  # type: ignore[arg-type]
                                 HistorySettings())
        history.write_samples(start - 3600, [("allocated", labels, busy(-1))])
        with engine.begin() as conn:
            [sid] = conn.execute(sa.select(history_series.c.id).where(
                history_series.c.metric == "allocated")).scalars().all()
            conn.execute(sa.insert(history_rollups), [
                {"series_id": sid, "start": start + h * 3600, "step": 300.0, "min": busy(h),
                 "max": busy(h), "mean": busy(h), "count": 1, "last": busy(h)}
                for h in range(-DAYS * 24, 0)])
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("pools")
    seed_pool_history(data / "apportion.db", time.time() // 3600 * 3600)
    providers = data / "providers.toml"
    providers.write_text(PROVIDERS.format(state_dir=json.dumps(str(data / "lab-nodes"))))
    env = {**config_env(data, SERVER), "APPORTION_PROVIDERS_FILE": str(providers),
           "APPORTION_HISTORY_INTERVAL": "0.5"}
    proc = ServerProcess(data, extra_env=env)
    proc.start(timeout=120)
    try:
        with proc.client() as api:
            for name, labels in (("main-1", {"facility": "main"}),
                                 ("ahead-1", {"pool": "ahead"})):
                r = api.post("/api/v1/nodes", json={
                    "name": name, "resources": {"cpu": "4", "memory": "8Gi"},
                    "labels": labels})
                assert r.status_code == 201, r.text
        yield proc
    finally:
        proc.stop()


def _pool(answer: dict[str, Any], name: str) -> dict[str, Any]:
    [pool] = [p for p in answer["pools"] if p["pool"] == name]
    return pool  # type: ignore[no-any-return]


def test_a_job_only_a_pool_could_hold_waits_for_it_and_the_pool_advises_a_node(
    server: ServerProcess,
) -> None:
    with server.client() as api:
        r = api.post("/api/v1/jobs", json={"name": "on-burst", "resources": {"cpu": "2"},
                                           "constraints": ["facility=burst"]})
        assert r.status_code == 201, r.text
        job = r.json()
        assert (job["state"], job["reason"]) == (
            "pending", "waiting for pool burst to add a node"), job
        assert api.get(f"/api/v1/jobs/{job['id']}").json()["reason"] == \
            "waiting for pool burst to add a node"

        def advised() -> Any:
            burst = _pool(api.get("/api/v1/scaling/evaluation").json(), "burst")
            return burst if burst["decision"] == "scale_up" else None

        burst = until(advised, 30, "the burst pool's advice")
    assert (burst["count"], burst["template"], burst["pending_tasks"]) == (1, "c4", 1)
    assert (burst["mode"], burst["advice_only"]) == ("advice", True)
    assert burst["reason"] == ("add 1 c4 node(s) (cpu=4,memory=8Gi): 1 pending task(s) fit "
                               "on no node; they pack onto 1 c4 node(s)")


def test_a_job_no_node_and_no_pool_could_hold_is_refused_naming_the_constraint(
    server: ServerProcess,
) -> None:
    with server.client() as api:
        r = api.post("/api/v1/jobs", json={"resources": {"cpu": "1"},
                                           "constraints": ["facility=nowhere"]})
        assert r.status_code == 422, r.text
        assert "facility=nowhere" in r.json()["message"], r.text
        assert "~" not in r.json()["message"], r.text  # no stand-in node named
        # Larger than every node and every pool's node type: refused too.
        r = api.post("/api/v1/jobs", json={"resources": {"cpu": "6"},
                                           "constraints": ["facility=burst"]})
        assert r.status_code == 422, r.text
        assert r.json()["field"] == "tasks", r.text


def test_a_forecast_peak_scales_the_pool_up_before_it_comes(
    server: ServerProcess, tmp_path: Path,
) -> None:
    with server.client() as api:
        def forecast() -> Any:
            ahead = _pool(api.get("/api/v1/scaling/evaluation").json(), "ahead")
            return ahead if ahead["forecast_peak"] is not None else None

        ahead = until(forecast, 60, "the ahead pool's forecast peak", every=0.2)
    # Nothing runs on ahead-1 now; 3.6 of its 4 cpu are forecast within 2 h.
    assert ahead["forecast_peak"] == pytest.approx(0.9, abs=0.005)
    assert (ahead["decision"], ahead["count"], ahead["size"]) == ("scale_up", 1, 1), ahead
    assert ahead["pending_tasks"] == 0
    assert ahead["reason"] == (
        "add 1 c4 node(s) (cpu=4,memory=8Gi): forecast peak utilization 90% within the "
        "next 2 h is above 80%; scaling ahead of it to target 70%")
    # The same decision, in words, from the command line.
    out = subprocess.run(
        [sys.executable, "-m", "apportion.cli.main", "scale", "plan", "--server", server.url,
         "--token", server.token],
        env={**{k: v for k, v in os.environ.items() if not k.startswith("APPORTION_")},
             "APPORTION_CONFIG": str(tmp_path / "none.toml"), "COLUMNS": "400"},
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    [row] = [line for line in out.stdout.splitlines() if "│ ahead " in line]
    assert "scale_up +1 × c4" in row and "forecast peak utilization 90% within the next 2 h" \
        in row, row


def test_the_planner_records_the_allocated_amount_per_pool_only(
    server: ServerProcess,
) -> None:
    def recorded() -> Any:
        with contextlib.closing(sqlite3.connect(server.data_dir / "apportion.db",
                                                timeout=10)) as db:
            rows = db.execute("SELECT metric, labels FROM history_series").fetchall()
        found = sorted((metric, labels["group"], labels["resource"])
                       for metric, raw in rows
                       for labels in [json.loads(raw)] if labels.get("group_by") == "pool")
        return found if len(found) >= 4 else None

    # Node main-1 is in no pool: no "(none)" group; ahead-1 is in pool ahead.
    assert until(recorded, 30, "the per-pool series") == [
        ("allocated", "ahead", "cpu"), ("allocated", "ahead", "memory"),
        ("demand", "ahead", "cpu"), ("demand", "ahead", "memory")]
