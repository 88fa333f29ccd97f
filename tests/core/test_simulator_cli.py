"""``apportion simulate`` through a throwaway typer app (the lead registers
the command on the main app with ``register``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from apportion.cli.simulate import register

SWF = """\
; MaxNodes: 4
; MaxProcs: 4
1 0 5 100 3 -1 -1 3 100 -1 1 1 1 -1 -1 -1 -1 -1
2 10 -1 50 4 -1 -1 4 60 -1 1 2 2 -1 -1 -1 -1 -1
3 20 -1 30 1 -1 -1 1 30 -1 1 3 3 -1 -1 -1 -1 -1
4 25 -1 0 1 -1 -1 1 30 -1 1 3 3 -1 -1 -1 -1 -1
"""


def app() -> typer.Typer:
    main = typer.Typer()

    @main.callback()
    def root() -> None:
        """apportion"""

    register(main)
    return main


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    path = tmp_path / "t.swf"
    path.write_text(SWF)
    return path


def test_json_has_the_documented_fields(trace: Path) -> None:
    result = CliRunner().invoke(app(), ["simulate", str(trace), "--backfill", "easy", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    for key in ("jobs", "dropped", "mean_wait_s", "median_wait_s", "p95_wait_s", "max_wait_s",
                "mean_bounded_slowdown", "utilization", "makespan_s", "preemptions",
                "deadline_misses", "wall_s", "real_mean_wait_s", "estimate_mae_s",
                "reservation_moves"):
        assert key in data, key
    assert (data["jobs"], data["dropped"], data["mean_wait_s"]) == (3, 1, 30.0)
    # Job 2 asked for 60 s and ran 50 s; the others asked for what they ran.
    assert (data["estimate_mae_s"], data["reservation_moves"]) == (pytest.approx(10 / 3), 0)
    assert data["trace"]["dropped"] == {"run time 0 or unknown": 1}


def test_compare_prints_one_table_with_the_real_log(trace: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(app(), [
        "simulate", str(trace), "--compare", "--strategies", "fifo,sjf",
        "--backfills", "none,easy", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert result.output.count("fifo") >= 2 and "real log" in result.output
    assert "est MAE h" in result.output and "res moves" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert [(r["strategy"], r["backfill"]) for r in summary["runs"]] == [
        ("fifo", "none"), ("fifo", "easy"), ("sjf", "none"), ("sjf", "easy")]
    assert (out / "jobs-sjf-easy.csv").read_text().startswith("id,queue,submit")


def test_node_override_and_errors(trace: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app(), ["simulate", str(trace), "--nodes", "2",
                                        "--node-resources", "cpu=1", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["trace"]["nodes"] == 2
    assert data["trace"]["dropped"] == {"more processors than the machine": 2,
                                        "run time 0 or unknown": 1}
    bad = CliRunner().invoke(app(), ["simulate", str(trace), "--strategy", "magic"])
    assert bad.exit_code == 2
    assert "unknown 'magic'" in bad.output


def test_plot_writes_pngs(trace: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="--plot needs matplotlib (optional extra)")
    out = tmp_path / "plots"
    result = CliRunner().invoke(app(), ["simulate", str(trace), "--out", str(out), "--plot",
                                        "--no-progress"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.glob("*.png")) == [
        "queue_length.png", "utilization.png", "wait_cdf.png"]


def test_ctrl_c_keeps_the_finished_rows(trace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import apportion.core.simulator as simulator

    real = simulator.simulate
    calls = []

    def interrupted_third(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(simulator, "simulate", interrupted_third)
    result = CliRunner().invoke(app(), [
        "simulate", str(trace), "--compare", "--strategies", "fifo,sjf",
        "--backfills", "none,easy", "--no-progress"])
    assert result.exit_code == 130
    rows = [line.split("│")[1:3] for line in result.stdout.splitlines() if "│ fifo" in line]
    assert [[c.strip() for c in r] for r in rows] == [["fifo", "none"], ["fifo", "easy"]]
    assert "interrupted: 2 of 4 runs finished" in result.stderr
