"""Pressure monitor: periodic samples of CPU, memory and GPUs, thresholds
with alerts, trends, and a health level.

One sample a second (by default) goes into a bounded history (five minutes).
Each thresholded metric has a level: ``healthy``, ``moderate``, ``warning``,
``critical``; the process's health is the worst of them. A level change is an
:class:`Alert`, kept and passed to callbacks. When the process runs as an
apportion task, each sample's summary is written atomically to the file
named by ``APPORTION_USAGE_FILE`` for the agent's heartbeat.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import psutil

from apportion.guard.nvml import AUTO, GpuReading, Nvml, NvmlChoice
from apportion.protocol import USAGE_FILE_ENV

log = logging.getLogger("apportion.guard.monitor")

USAGE_FILE_VERSION = 1
MIB = 2**20


class Level(StrEnum):
    HEALTHY = "healthy"
    MODERATE = "moderate"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Level.HEALTHY: 0, Level.MODERATE: 1, Level.WARNING: 2, Level.CRITICAL: 3}


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading; a field is ``None`` when its sensor failed."""

    time: float
    process_cpu_percent: float | None
    system_cpu_percent: float | None
    process_rss: int | None
    system_memory_used: int | None
    system_memory_total: int | None
    system_memory_percent: float | None
    memory_budget_percent: float | None = None
    gpus: tuple[GpuReading, ...] = ()

    def metrics(self) -> dict[str, float]:
        """Flat metric name -> value, the names thresholds and trends use."""
        raw: dict[str, float | int | None] = {
            "process.cpu_percent": self.process_cpu_percent,
            "process.rss": self.process_rss,
            "process.memory_budget_percent": self.memory_budget_percent,
            "system.cpu_percent": self.system_cpu_percent,
            "system.memory_used": self.system_memory_used,
            "system.memory_percent": self.system_memory_percent,
        }
        for gpu in self.gpus:
            raw[f"gpu.{gpu.index}.memory_used"] = gpu.memory_used
            raw[f"gpu.{gpu.index}.memory_percent"] = gpu.memory_percent
            raw[f"gpu.{gpu.index}.temperature"] = gpu.temperature
            raw[f"gpu.{gpu.index}.utilization"] = gpu.utilization
        return {k: float(v) for k, v in raw.items() if v is not None}

    def to_dict(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "process": {
                "cpu_percent": self.process_cpu_percent,
                "rss": self.process_rss,
                "memory_budget_percent": self.memory_budget_percent,
            },
            "system": {
                "cpu_percent": self.system_cpu_percent,
                "memory_used": self.system_memory_used,
                "memory_total": self.system_memory_total,
                "memory_percent": self.system_memory_percent,
            },
            "gpus": [g.to_dict() for g in self.gpus],
        }


class Sampler:
    """Reads this process and the system through psutil, GPUs through NVML.

    ``memory_budget`` (bytes) turns RSS into ``process.memory_budget_percent``.
    """

    def __init__(self, *, nvml: NvmlChoice = AUTO, memory_budget: int | None = None) -> None:
        self._process = psutil.Process()
        self._nvml = Nvml.open(nvml)
        self.memory_budget = memory_budget
        # psutil's CPU percentages compare with the previous call; prime them
        # so the first real sample covers the time since construction.
        self._process.cpu_percent(None)
        psutil.cpu_percent(None)

    def __call__(self) -> Sample:
        proc_cpu = _safe(lambda: float(self._process.cpu_percent(None)))
        sys_cpu = _safe(lambda: float(psutil.cpu_percent(None)))
        rss = _safe(lambda: int(self._process.memory_info().rss))
        vm = _safe(psutil.virtual_memory)
        budget = None
        if rss is not None and self.memory_budget:
            budget = 100.0 * rss / self.memory_budget
        gpus = tuple(self._nvml.read_all()) if self._nvml is not None else ()
        return Sample(
            time.time(),
            proc_cpu,
            sys_cpu,
            rss,
            None if vm is None else int(vm.total - vm.available),
            None if vm is None else int(vm.total),
            None if vm is None else float(vm.percent),
            budget,
            gpus,
        )


def _safe(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except (OSError, psutil.Error):
        return None


@dataclass(frozen=True, slots=True)
class Threshold:
    """Levels for the metrics matching ``metric`` (shell pattern, e.g.
    ``gpu.*.temperature``); ``moderate`` defaults to 80 % of ``warning``."""

    metric: str
    warning: float
    critical: float
    moderate: float | None = None

    def level(self, value: float) -> Level:
        if value >= self.critical:
            return Level.CRITICAL
        if value >= self.warning:
            return Level.WARNING
        moderate = self.moderate if self.moderate is not None else 0.8 * self.warning
        return Level.MODERATE if value >= moderate else Level.HEALTHY

    def limit(self, level: Level) -> float | None:
        if level is Level.CRITICAL:
            return self.critical
        if level is Level.WARNING:
            return self.warning
        if level is Level.MODERATE:
            return self.moderate if self.moderate is not None else 0.8 * self.warning
        return None


DEFAULT_THRESHOLDS: tuple[Threshold, ...] = (
    Threshold("system.memory_percent", 85.0, 95.0, 70.0),
    Threshold("process.memory_budget_percent", 85.0, 95.0, 70.0),
    Threshold("gpu.*.memory_percent", 85.0, 95.0, 70.0),
    Threshold("gpu.*.temperature", 80.0, 90.0, 70.0),
    Threshold("system.cpu_percent", 90.0, 98.0, 75.0),
)


@dataclass(frozen=True, slots=True)
class Alert:
    """A metric's level changed (up or back down)."""

    time: float
    metric: str
    level: Level
    previous: Level
    value: float
    limit: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "metric": self.metric,
            "level": self.level.value,
            "previous": self.previous.value,
            "value": round(self.value, 3),
            "limit": self.limit,
        }


@dataclass(frozen=True, slots=True)
class Trend:
    """Least-squares slope of one metric over a window of samples."""

    metric: str
    slope_per_second: float
    direction: str
    first: float
    last: float
    mean: float
    low: float
    high: float
    samples: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "slope_per_second": round(self.slope_per_second, 6),
            "direction": self.direction,
            "first": round(self.first, 3),
            "last": round(self.last, 3),
            "mean": round(self.mean, 3),
            "min": round(self.low, 3),
            "max": round(self.high, 3),
            "samples": self.samples,
        }


def trend_of(metric: str, points: list[tuple[float, float]]) -> Trend | None:
    """``rising``/``falling`` when the fitted change over the window exceeds
    5 % of the mean (and one unit, or 1 MiB for byte series), else ``stable``."""
    if len(points) < 2:
        return None
    n = len(points)
    t0 = points[0][0]
    ts = [t - t0 for t, _ in points]
    vs = [v for _, v in points]
    mt, mv = sum(ts) / n, sum(vs) / n
    var = sum((t - mt) ** 2 for t in ts)
    slope = 0.0 if var == 0 else sum((t - mt) * (v - mv) for t, v in zip(ts, vs, strict=True)) / var
    change = slope * (ts[-1] - ts[0])
    floor = float(MIB) if metric.endswith(("rss", "memory_used")) else 1.0
    tolerance = max(0.05 * abs(mv), floor)
    direction = "stable"
    if change > tolerance:
        direction = "rising"
    elif change < -tolerance:
        direction = "falling"
    return Trend(metric, slope, direction, vs[0], vs[-1], mv, min(vs), max(vs), n)


SampleCallback = Callable[[Sample], None]
AlertCallback = Callable[[Alert], None]


class PressureMonitor:
    """Samples every ``interval`` seconds on a daemon thread (``start``/``stop``,
    or ``with``), or on demand with :meth:`sample_now`."""

    def __init__(
        self,
        *,
        interval: float = 1.0,
        history_seconds: float = 300.0,
        sampler: Callable[[], Sample] | None = None,
        thresholds: Iterable[Threshold] = DEFAULT_THRESHOLDS,
        usage_file: str | Path | None = None,
        environ: Mapping[str, str] | None = None,
        nvml: NvmlChoice = AUTO,
        memory_budget: int | None = None,
        max_alerts: int = 200,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.interval = interval
        self.sampler = sampler or Sampler(nvml=nvml, memory_budget=memory_budget)
        self.thresholds = list(thresholds)
        self.history: deque[Sample] = deque(maxlen=max(2, int(history_seconds / interval)))
        self.alerts: deque[Alert] = deque(maxlen=max_alerts)
        env = os.environ if environ is None else environ
        chosen = usage_file if usage_file is not None else env.get(USAGE_FILE_ENV) or None
        self.usage_file = None if chosen is None else Path(chosen)
        self.extras: list[Callable[[], Mapping[str, Any]]] = []
        self._levels: dict[str, Level] = {}
        self._on_sample: list[SampleCallback] = []
        self._on_alert: list[AlertCallback] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- wiring ---------------------------------------------------------

    def on_sample(self, callback: SampleCallback) -> SampleCallback:
        self._on_sample.append(callback)
        return callback

    def on_alert(self, callback: AlertCallback) -> AlertCallback:
        self._on_alert.append(callback)
        return callback

    def add_threshold(self, threshold: Threshold) -> None:
        self.thresholds.append(threshold)

    # -- running --------------------------------------------------------

    def start(self) -> PressureMonitor:
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="apportion-guard-monitor")
        self._thread.daemon = True  # never keep a finished service alive
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> PressureMonitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample_now()
            except Exception:  # a sampling fault must not end monitoring
                log.exception("pressure monitor sample failed")
            self._stop.wait(self.interval)

    def sample_now(self) -> Sample:
        """Take one sample: history, levels and alerts, callbacks, usage file."""
        sample = self.sampler()
        with self._lock:
            self.history.append(sample)
            alerts = self._update_levels(sample)
            self.alerts.extend(alerts)
        for alert in alerts:
            log.log(_log_level(alert.level), "pressure %s: %s = %.1f (limit %s)",
                    alert.level.value, alert.metric, alert.value, alert.limit)
            for callback in self._on_alert:
                _guarded(callback, alert)
        for sample_callback in self._on_sample:
            _guarded(sample_callback, sample)
        if self.usage_file is not None:
            self.write_usage_file(self.usage_file)
        return sample

    def _update_levels(self, sample: Sample) -> list[Alert]:
        alerts = []
        for metric, value in sample.metrics().items():
            threshold = self._threshold_for(metric)
            if threshold is None:
                continue
            level = threshold.level(value)
            previous = self._levels.get(metric, Level.HEALTHY)
            self._levels[metric] = level
            if level is not previous:
                alerts.append(
                    Alert(sample.time, metric, level, previous, value, threshold.limit(level))
                )
        return alerts

    def _threshold_for(self, metric: str) -> Threshold | None:
        for threshold in reversed(self.thresholds):  # later ones override defaults
            if fnmatch.fnmatchcase(metric, threshold.metric):
                return threshold
        return None

    # -- reading --------------------------------------------------------

    def latest(self) -> Sample | None:
        with self._lock:
            return self.history[-1] if self.history else None

    def levels(self) -> dict[str, Level]:
        with self._lock:
            return dict(self._levels)

    def health(self) -> Level:
        """The worst level of any thresholded metric in the latest sample."""
        levels = self.levels().values()
        return max(levels, key=lambda lv: lv.rank, default=Level.HEALTHY)

    def series(self, metric: str, window: float | None = None) -> list[tuple[float, float]]:
        with self._lock:
            samples = list(self.history)
        if window is not None and samples:
            cutoff = samples[-1].time - window
            samples = [s for s in samples if s.time >= cutoff]
        out = []
        for sample in samples:
            value = sample.metrics().get(metric)
            if value is not None:
                out.append((sample.time, value))
        return out

    def trend(self, metric: str, window: float = 60.0) -> Trend | None:
        return trend_of(metric, self.series(metric, window))

    def trends(self, window: float = 60.0) -> dict[str, Trend]:
        latest = self.latest()
        if latest is None:
            return {}
        out = {}
        for metric in latest.metrics():
            found = self.trend(metric, window)
            if found is not None:
                out[metric] = found
        return out

    def summary(self) -> dict[str, Any]:
        """The latest sample with health and levels; the usage file's body."""
        latest = self.latest()
        body: dict[str, Any] = {
            "version": USAGE_FILE_VERSION,
            "pid": os.getpid(),
            "time": None if latest is None else latest.time,
            "health": self.health().value,
            "levels": {k: v.value for k, v in sorted(self.levels().items())
                       if v is not Level.HEALTHY},
        }
        if latest is not None:
            body.update({k: v for k, v in latest.to_dict().items() if k != "time"})
        for extra in self.extras:
            body.update(extra())
        return body

    def write_usage_file(self, path: Path) -> None:
        """Write :meth:`summary` to ``path`` atomically (a reader never sees a
        half-written file): a temporary file beside it, then ``os.replace``."""
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(self.summary(), default=str), encoding="utf-8")
            os.replace(tmp, path)
        except OSError:
            log.warning("cannot write usage file %s", path, exc_info=True)


def _guarded(callback: Callable[[Any], None], arg: Any) -> None:
    try:
        callback(arg)
    except Exception:  # one broken callback must not silence the others
        log.exception("pressure monitor callback failed")


def _log_level(level: Level) -> int:
    return {
        Level.CRITICAL: logging.ERROR,
        Level.WARNING: logging.WARNING,
    }.get(level, logging.INFO)
