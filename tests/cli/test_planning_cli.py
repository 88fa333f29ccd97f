"""``apportion forecast``, ``predict`` and ``submit --resources auto``, run
as real subprocesses against a real server whose store holds three weeks of
capacity history and six finished runs of a job called ``train``."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from apportion.core.records import UsageRow
from apportion.store.database import create_engine, migrate
from apportion.store.usage_tables import insert_usage
from cli.test_cli import clean_env, rows, run, write_config
from planning_support import add_tx_gpus, start_seeded_server

GIB = 1 << 30


def _seed_usage(db: Path) -> None:
    engine = create_engine(f"sqlite:///{db}", sqlite_synchronous="OFF")
    try:
        migrate(engine)
        with engine.begin() as conn:
            for i in range(1, 7):
                insert_usage(conn, UsageRow(
                    f"t-{i}", f"j-{i}", "train", "admin", "default", "sleep 1", "succeeded",
                    {"cpu": 1000}, {"memory": i * GIB, "cpu_seconds": 50 * i, "runtime_s": 100 * i},
                    1000.0 + i, 1000.0 + i + 100 * i))
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    def make_dir() -> Path:
        data = tmp_path_factory.mktemp("planning-cli")
        _seed_usage(data / "apportion.db")
        return data

    proc = start_seeded_server(make_dir, lambda data: {},
                               lambda api: add_tx_gpus(api, cpu=16, memory="128Gi"))
    try:
        config = proc.data_dir / "cli.toml"
        yield clean_env(write_config(config, proc.url, proc.token))
    finally:
        proc.stop()


def test_forecast_table_json_and_plot(env: dict[str, str], tmp_path: Path) -> None:
    out = run(env, "forecast", "--group-by", "facility", "--resource", "gpu", "--days", "7")
    [allocated, demand] = rows(out.stdout)
    assert allocated[:4] == ["tx", "gpu", "8", "allocated"]
    assert allocated[6] == "holt_winters_daily (seasonal)"
    assert allocated[7].startswith("MAPE ")
    assert "(in 4." in allocated[8]  # about 101 h ahead
    assert demand[3] == "demand"

    answer = json.loads(run(env, "forecast", "--group-by", "facility", "--json").stdout)
    gpu = next(f for f in answer["forecasts"] if f["resource"] == "gpu")
    assert gpu["allocated"]["points"] and gpu["allocated"]["history"]
    # The server's own samples this hour all read 5 (see add_tx_gpus).
    assert gpu["allocated"]["history"][-1][1] == 5

    bad = run(env, "forecast", "--days", "120", ok=False)
    assert bad.returncode == 2 and "--days: from 1 to 90" in bad.stderr

    # Without matplotlib, --plot says what to install (a stand-in hides it).
    hidden = tmp_path / "hide"
    (hidden / "matplotlib").mkdir(parents=True)
    (hidden / "matplotlib" / "__init__.py").write_text("raise ImportError('hidden')\n")
    proc = run({**env, "PYTHONPATH": str(hidden)}, "forecast", "--plot",
               str(tmp_path / "f.png"), ok=False)
    assert proc.returncode == 1
    assert "--plot needs matplotlib; install the plot extra" in proc.stderr


def test_forecast_plot_draws_a_png(env: dict[str, str], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "forecast.png"
    out = run(env, "forecast", "--group-by", "facility", "--plot", str(path))
    assert f"written to {path}" in out.stdout
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_predict_shows_tier_confidence_and_samples(env: dict[str, str]) -> None:
    out = run(env, "predict", "train")
    assert "tier robust, confidence 88%, 6 sample(s)" in out.stdout.replace("\n", " ")
    table = {r[0]: r for r in rows(out.stdout)}
    # p95 of 1..6 GiB, + 10 %: 6.325 GiB; of 100..600 s: 633 s.
    assert table["memory"][1:4] == ["6477Mi", "robust", "6"]
    assert table["runtime_s"][1:3] == ["633s", "robust"]
    assert table["cpu_seconds"][1] == "317 cpu-s"
    assert table["runtime_s"][6] == "600s"  # the most it used, below the estimate
    assert table["memory"][6] == "6Gi"

    # A new name of the same user: the user's other runs are the basis.
    other = json.loads(run(env, "predict", "never-ran", "--json").stdout)
    assert other["tier"] == "robust" and other["detail"]["memory"]["basis"] == "user"
    # Nobody's runs at all: the default, a coin toss.
    unknown = json.loads(run(env, "predict", "never-ran", "--user", "bob", "--json").stdout)
    assert (unknown["tier"], unknown["samples"], unknown["confidence"]) == ("default", 0, 0.5)
    assert unknown["values"]["memory"] == "1Gi"


def test_submit_with_auto_resources_records_the_prediction(env: dict[str, str]) -> None:
    job = json.loads(run(env, "submit", "--resources", "auto", "--name", "train",
                         "--json", "--", "sleep", "1").stdout)
    spec = job["spec"]
    # 317 cpu-seconds over 633 s: 0.5 cpu, rounded up to a tenth: 600m.
    assert spec["resources"] == {"cpu": "600m", "memory": "6477Mi"}
    assert spec["runtime_estimate"] == 633
    assert spec["prediction"]["filled"] == {"memory": "6477Mi", "cpu": "600m",
                                            "runtime_estimate": "633s"}
    assert spec["prediction"]["tier"] == "robust"

    pinned = json.loads(run(env, "submit", "--resources", "cpu=2,memory=auto", "--name", "train",
                            "--json", "--", "sleep", "1").stdout)
    assert pinned["spec"]["resources"] == {"cpu": "2", "memory": "6477Mi"}

    bad = run(env, "submit", "--resources", "gpu=auto", "--name", "train", "--", "true",
              ok=False)
    assert bad.returncode == 1
    assert "resources.gpu: only cpu and memory can be 'auto'" in bad.stderr


def test_forecast_plot_draws_every_panel_with_data_in_human_units_and_dates(
        env: dict[str, str]) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from apportion.cli.planning_cmds import forecast_figure

    answer = json.loads(run(env, "forecast", "--group-by", "facility", "--json").stdout)
    # tx/gpu has three weeks of history and a forecast; cpu and memory have one
    # sample the server took (too little to forecast): drawn too, as a dot.
    fig, drawn, empty = forecast_figure(answer, plt)
    fig.canvas.draw()
    assert (drawn, empty) == (["tx/cpu", "tx/gpu", "tx/memory"], [])
    ticks = {ax.get_title(): [t.get_text() for t in ax.get_yticklabels()] for ax in fig.axes}
    assert ticks == {
        "cpu — facility tx": ["0", "2.5", "5", "7.5", "10", "12.5", "15", "17.5"],  # cores
        "gpu — facility tx": ["0", "2", "4", "6", "8", "10"],
        "memory — facility tx": ["0Gi", "20Gi", "40Gi", "60Gi", "80Gi", "100Gi", "120Gi",
                                 "140Gi"],  # not 1.4e11
    }
    labels = {ax.get_title(): ax.get_legend_handles_labels()[1]
              for ax in fig.axes}
    assert "capacity 128Gi" in labels["memory — facility tx"]
    assert "allocated: too little history to forecast yet" in labels["cpu — facility tx"]
    for ax in fig.axes:
        # Every panel's dates readable: 'Nov 17', 'Dec 05', with the year apart.
        dates = [t.get_text() for t in ax.get_xticklabels()]
        assert len(dates) >= 4 and all(re.fullmatch(r"[A-Z][a-z]{2} \d{2}", d) for d in dates), \
            dates
        assert re.fullmatch(r"20\d\d", ax.xaxis.get_offset_text().get_text())
    plt.close(fig)

    # A group without any data is left out, and named.
    cpu = next(e for e in answer["forecasts"] if e["resource"] == "cpu")
    for metric in ("allocated", "demand"):
        cpu[metric]["history"] = []
    fig, drawn, empty = forecast_figure(answer, plt)
    assert (drawn, empty, len(fig.axes)) == (["tx/gpu", "tx/memory"], ["tx/cpu"], 2)
    plt.close(fig)
