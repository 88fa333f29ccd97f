from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from apportion.guard import (
    Alert,
    Guard,
    Level,
    PressureMonitor,
    Sample,
    Sampler,
    Threshold,
)
from apportion.guard.monitor import trend_of
from apportion.guard.nvml import GpuReading

GIB = 2**30


class Script:
    """A sampler that plays back memory percentages at one sample a second."""

    def __init__(self, memory_percents: list[float], rss: list[int] | None = None) -> None:
        self.values = list(memory_percents)
        self.rss = list(rss or [100] * len(memory_percents))
        self.t = 1000.0

    def __call__(self) -> Sample:
        self.t += 1.0
        return Sample(
            self.t, 10.0, 20.0, self.rss.pop(0), 4 * GIB, 16 * GIB, self.values.pop(0),
            None, (GpuReading(0, 40 * GIB, 80 * GIB, 65.0, 50.0),),
        )


def test_levels_alerts_and_health() -> None:
    mon = PressureMonitor(sampler=Script([50, 72, 90, 97, 60]), usage_file=None, environ={})
    got: list[Alert] = []
    mon.on_alert(got.append)
    healths = []
    for _ in range(5):
        mon.sample_now()
        healths.append(mon.health().value)
    assert healths == ["healthy", "moderate", "warning", "critical", "healthy"]
    assert [(a.metric, a.previous.value, a.level.value, a.limit) for a in got] == [
        ("system.memory_percent", "healthy", "moderate", 70.0),
        ("system.memory_percent", "moderate", "warning", 85.0),
        ("system.memory_percent", "warning", "critical", 95.0),
        ("system.memory_percent", "critical", "healthy", None),
    ]
    assert len(mon.alerts) == 4


def test_gpu_metrics_follow_glob_thresholds() -> None:
    mon = PressureMonitor(
        sampler=Script([10]),
        thresholds=[Threshold("gpu.*.temperature", 60.0, 90.0)],
        environ={},
    )
    mon.sample_now()
    assert mon.levels() == {"gpu.0.temperature": Level.WARNING}
    assert mon.health() is Level.WARNING


def test_added_threshold_overrides_a_default() -> None:
    mon = PressureMonitor(sampler=Script([50]), environ={})
    mon.add_threshold(Threshold("system.memory_percent", 40.0, 45.0))
    mon.sample_now()
    assert mon.levels()["system.memory_percent"] is Level.CRITICAL


def test_history_is_bounded() -> None:
    mon = PressureMonitor(
        sampler=Script([1.0] * 20), interval=1.0, history_seconds=5.0, environ={}
    )
    for _ in range(20):
        mon.sample_now()
    assert len(mon.history) == 5
    assert [t for t, _ in mon.series("system.memory_percent")] == [
        1016.0, 1017.0, 1018.0, 1019.0, 1020.0
    ]
    assert len(mon.series("system.memory_percent", window=2.0)) == 3


def test_trends() -> None:
    mon = PressureMonitor(
        sampler=Script([10, 20, 30, 40, 50], rss=[5 * 2**20] * 5), environ={}
    )
    for _ in range(5):
        mon.sample_now()
    up = mon.trend("system.memory_percent")
    assert up is not None
    assert up.direction == "rising"
    assert up.slope_per_second == 10.0
    assert (up.first, up.last, up.low, up.high, up.mean) == (10.0, 50.0, 10.0, 50.0, 30.0)
    flat = mon.trend("process.rss")
    assert flat is not None and flat.direction == "stable"
    assert "gpu.0.temperature" in mon.trends()


def test_trend_of_small_series() -> None:
    assert trend_of("x", [(0.0, 1.0)]) is None
    down = trend_of("x_percent", [(0.0, 90.0), (10.0, 60.0)])
    assert down is not None and down.direction == "falling"
    assert down.slope_per_second == -3.0


def test_usage_file_written_atomically(tmp_path: Path) -> None:
    path = tmp_path / "run" / "usage.json"
    mon = PressureMonitor(
        sampler=Script([72]), environ={"APPORTION_USAGE_FILE": str(path)}
    )
    mon.extras.append(lambda: {"ledger": {"used": {"memory": "1Gi"}}})
    mon.sample_now()
    body = json.loads(path.read_text())
    assert body["version"] == 1
    assert body["pid"] == os.getpid()
    assert body["health"] == "moderate"
    assert body["levels"] == {"system.memory_percent": "moderate"}
    assert body["system"]["memory_percent"] == 72
    assert body["gpus"][0]["memory_percent"] == 50.0
    assert body["ledger"] == {"used": {"memory": "1Gi"}}
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


def test_callbacks_that_fail_do_not_stop_sampling() -> None:
    mon = PressureMonitor(sampler=Script([10, 10]), environ={})

    def broken(_sample: Sample) -> None:
        raise RuntimeError("callback bug")

    seen: list[Sample] = []
    mon.on_sample(broken)
    mon.on_sample(seen.append)
    mon.sample_now()
    assert len(seen) == 1


def test_real_sampler_reads_this_process() -> None:
    sample = Sampler(nvml=None, memory_budget=64 * GIB)()
    assert sample.process_rss is not None and sample.process_rss > 10 * 2**20
    assert sample.system_memory_total is not None and sample.system_memory_total > 0
    assert sample.memory_budget_percent is not None and 0 < sample.memory_budget_percent < 100
    assert sample.gpus == ()


def test_sampler_reads_gpus_through_fake_nvml(fake_nvml: Any) -> None:
    sample = Sampler()()
    assert [g.to_dict() for g in sample.gpus] == [
        {"index": 0, "memory_used": 10 * GIB, "memory_total": 80 * GIB,
         "memory_percent": 12.5, "temperature": 45.0, "utilization": 30.0},
        {"index": 1, "memory_used": 70 * GIB, "memory_total": 80 * GIB,
         "memory_percent": 87.5, "temperature": 83.0, "utilization": 95.0},
    ]
    mon = PressureMonitor(sampler=lambda: sample, environ={})
    mon.sample_now()
    assert mon.levels()["gpu.1.memory_percent"] is Level.WARNING
    assert mon.levels()["gpu.1.temperature"] is Level.WARNING
    assert mon.levels()["gpu.0.temperature"] is Level.HEALTHY


def test_failing_gpu_sensor_reads_as_none(fake_nvml: Any) -> None:
    fake_nvml.gpus[0]["temperature"] = None
    fake_nvml.gpus[1]["memory_broken"] = True
    gpus = Sampler()().gpus
    assert gpus[0].temperature is None
    assert (gpus[1].memory_used, gpus[1].memory_percent) == (None, None)


def test_background_thread_samples_and_stops() -> None:
    script = Script([10.0] * 1000)
    mon = PressureMonitor(sampler=script, interval=0.01, environ={})
    with mon:
        assert mon.running
        deadline = time.monotonic() + 10
        while len(mon.history) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert not mon.running
    assert len(mon.history) >= 3


def test_guard_wires_monitor_to_cache_pressure() -> None:
    guard = Guard.create(capacity={"memory": "64Mi"}, environ={})
    assert guard.monitor is not None and guard.cache is not None
    guard.cache.pressure = lambda: 0.99
    guard.cache.get_or_load("a", lambda: bytearray(1024), size="1Ki")
    guard.monitor.sample_now()
    assert guard.cache.keys() == []
    assert guard.cache.stats.pressure_evictions == 1


@pytest.mark.parametrize("interval", [0.0, -1.0])
def test_interval_must_be_positive(interval: float) -> None:
    with pytest.raises(ValueError):
        PressureMonitor(interval=interval, sampler=Script([]), environ={})
