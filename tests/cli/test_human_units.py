"""Tables a person reads show ``23.5Gi`` and ``310Mi``, not ``24683792Ki``;
``--json`` keeps the exact text. Real CLI subprocesses against a real server."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.test_cli import clean_env, rows, run, run_json, write_config
from server.helpers import add_node, grant
from support import ServerProcess


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """One node whose memory is what /proc/meminfo reports (in Ki), 310Mi granted."""
    data = tmp_path_factory.mktemp("human-units")
    proc = ServerProcess(data).start()
    try:
        with proc.client() as api:
            add_node(api, {"name": "h1", "resources": {"cpu": "8", "memory": "24683792Ki"}})
            grant(api, resources={"cpu": "500m", "memory": "310Mi"}, node="h1", owner="ann")
        yield clean_env(write_config(Path(data) / "cli.toml", proc.url, proc.token),
                        COLUMNS="200")
    finally:
        proc.stop()


def test_nodes_list_and_show_print_human_units(env: dict[str, str]) -> None:
    assert rows(run(env, "nodes", "list").stdout) == [
        ["h1", "ready", "healthy", "cpu", "8", "500m", "7500m"],
        ["", "", "", "memory", "23.5Gi", "310Mi", "23.2Gi"],
    ]
    shown = rows(run(env, "nodes", "show", "h1").stdout)
    assert ["memory", "23.5Gi", "310Mi", "23.2Gi", "1%"] in shown
    assert any(r[1:3] == ["ann", "cpu=500m,memory=310Mi"] for r in shown)


def test_json_keeps_the_exact_text(env: dict[str, str]) -> None:
    [node] = run_json(env, "nodes", "list")
    assert node["resources"]["memory"] == "24683792Ki"
    assert node["available"]["memory"] == "24366352Ki"


def test_capacity_and_top_print_human_units(env: dict[str, str]) -> None:
    assert ["memory", "1", "memory", "23.5Gi", "310Mi", "23.2Gi", "1.3%"] in rows(
        run(env, "capacity").stdout)
    top = run(env, "top", "--once").stdout
    assert "310Mi" in top and "23.5Gi" in top and "24683792Ki" not in top


def test_the_forecast_table_rounds_to_the_nearest_in_human_units() -> None:
    from apportion.cli.planning_cmds import _forecast_rows

    series = {"end": {"mean": 3.4, "lo80": 2.5001, "hi80": 4.49}, "model": "holt",
              "seasonal": False, "backtest": None, "exhaustion_at": None}
    memory = {"end": {"mean": 3632151950.4, "lo80": 1.5 * 2**30, "hi80": 310.4 * 2**20},
              "model": "holt", "seasonal": False, "backtest": None, "exhaustion_at": None}
    answer = {"forecasts": [
        {"group": "tx", "resource": "gpu", "capacity": "8",
         "now": {"allocated_base": 3, "demand_base": 3}, "allocated": series, "demand": series},
        {"group": "tx", "resource": "memory", "capacity": "64Gi",
         "now": {"allocated_base": 24683792 * 1024, "demand_base": 0},
         "allocated": memory, "demand": memory},
    ]}
    got = [r[3:6] for r in _forecast_rows(answer)]
    assert got == [
        ["allocated", "3", "3 [3–4]"],
        ["demand", "3", "3 [3–4]"],
        ["allocated", "23.5Gi", "3.4Gi [1.5Gi–310.4Mi]"],
        ["demand", "0", "3.4Gi [1.5Gi–310.4Mi]"],
    ]


def test_forecast_on_a_fresh_server_says_how_much_history_it_needs(
    env: dict[str, str],
) -> None:
    out = run(env, "forecast").stdout
    assert rows(out)[2][:7] == [
        "memory", "memory", "23.5Gi", "allocated", "310Mi", "-", "insufficient_history"]
    # A step may be recorded while the test runs: 0 or 1 of the 3 needed.
    assert re.search(r"not enough history yet for cpu allocated, cpu demand, memory allocated, "
                     r"memory demand: ([01]) step\(s\) of 1 h recorded, a forecast needs "
                     r"at least 3 \(3 h\); about [32] h more", out.replace("\n", " ")), out
    body = run_json(env, "forecast")
    series = body["forecasts"][0]["allocated"]
    assert series["model"] == "insufficient_history"
    assert series["history_needed_s"] in (7200, 10800)
