"""``Guard``: the ledger, profiles, model cache, pressure monitor, call
history and pools of one service, wired together, with the status, report
and suggestions the HTTP endpoints serve.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from apportion.core.resources import format_human, format_vector, parse_vector
from apportion.guard.cache import DEFAULT_PRESSURE_THRESHOLD, ModelCache
from apportion.guard.calls import CALLS, CallHistory
from apportion.guard.capacity import DEFAULT_MARGIN, LocalCapacity, discover_local_capacity
from apportion.guard.ledger import LocalLedger, Reservation
from apportion.guard.monitor import Level, PressureMonitor
from apportion.guard.nvml import AUTO, NvmlChoice
from apportion.guard.pool import AsyncObjectPool, ObjectPool
from apportion.guard.profiles import Profiles, Requirement

MIB = 2**20
Pool = ObjectPool[Any] | AsyncObjectPool[Any]


class Guard:
    """One service's resource guard. Build it with :meth:`create`."""

    def __init__(
        self,
        ledger: LocalLedger,
        *,
        cache: ModelCache | None = None,
        monitor: PressureMonitor | None = None,
        calls: CallHistory | None = None,
    ) -> None:
        self.ledger = ledger
        self.cache = cache
        self.monitor = monitor
        self.calls = calls if calls is not None else CALLS
        self.pools: dict[str, Pool] = {}
        if monitor is not None:
            monitor.extras.append(self._usage_extra)
            if cache is not None:
                monitor.on_sample(lambda _sample: _relieve(cache))

    @classmethod
    def create(
        cls,
        *,
        capacity: Mapping[str, object] | None = None,
        margin: float = DEFAULT_MARGIN,
        profiles: Profiles | Mapping[str, Mapping[str, object]] | str | Path | None = None,
        cache: bool = True,
        cache_budget: int | str | None = None,
        pressure_threshold: float = DEFAULT_PRESSURE_THRESHOLD,
        monitor: bool = True,
        interval: float = 1.0,
        history_seconds: float = 300.0,
        environ: Mapping[str, str] | None = None,
        nvml: NvmlChoice = AUTO,
    ) -> Guard:
        """A guard over ``capacity`` when given (taken as is, no margin),
        else over this task's allocation or the machine, less ``margin``."""
        if capacity is not None:
            found = parse_vector(capacity, "capacity")
            source = LocalCapacity(found, found, source="configured", margin=0.0)
        else:
            source = discover_local_capacity(margin=margin, environ=environ, nvml=nvml)
        ledger = LocalLedger(source, profiles=_profiles(profiles))
        model_cache = None
        if cache:
            model_cache = ModelCache(
                ledger, budget=cache_budget, pressure_threshold=pressure_threshold
            )
        pressure = None
        if monitor:
            pressure = PressureMonitor(
                interval=interval,
                history_seconds=history_seconds,
                environ=environ,
                nvml=nvml,
                memory_budget=source.resources.get("memory"),
            )
        return cls(ledger, cache=model_cache, monitor=pressure)

    # -- the ledger's verbs -----------------------------------------------

    @property
    def profiles(self) -> Profiles:
        return self.ledger.profiles

    def reserve(
        self, what: object, *, timeout: float = 0.0, device: int | None = None,
        reclaim: bool = False,
    ) -> Reservation:
        return self.ledger.reserve(what, timeout=timeout, device=device, reclaim=reclaim)

    def validate(self, what: object, *, against_capacity: bool = False) -> Requirement:
        return self.ledger.validate(what, against_capacity=against_capacity)

    def add_pool(self, name: str, pool: Pool) -> Pool:
        """Show ``pool``'s statistics in status, report and suggestions."""
        self.pools[name] = pool
        return pool

    # -- running --------------------------------------------------------

    def start(self) -> Guard:
        if self.monitor is not None:
            self.monitor.start()
        return self

    def stop(self) -> None:
        if self.monitor is not None:
            self.monitor.stop()

    def __enter__(self) -> Guard:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what the endpoints serve ----------------------------------------

    def health(self) -> Level:
        return Level.HEALTHY if self.monitor is None else self.monitor.health()

    def status(self) -> dict[str, Any]:
        latest = None if self.monitor is None else self.monitor.latest()
        return {
            "health": self.health().value,
            "ledger": self.ledger.status(),
            "cache": None if self.cache is None else self.cache.stats.to_dict(),
            "latest": None if latest is None else latest.to_dict(),
            "pools": {name: pool.stats() for name, pool in sorted(self.pools.items())},
        }

    def report(self, window: float = 60.0) -> dict[str, Any]:
        trends = {} if self.monitor is None else self.monitor.trends(window)
        return {
            "status": self.status(),
            "profiles": self.profiles.to_dict(),
            "cache": None if self.cache is None else self.cache.status(),
            "trends": {k: t.to_dict() for k, t in sorted(trends.items())},
            "calls": self.calls.stats(),
            "suggestions": self.suggestions(window),
        }

    def alerts(self, limit: int = 100) -> dict[str, Any]:
        if self.monitor is None:
            return {"levels": {}, "alerts": []}
        return {
            "levels": {k: v.value for k, v in sorted(self.monitor.levels().items())},
            "alerts": [a.to_dict() for a in list(self.monitor.alerts)[-limit:]],
        }

    def history(self, limit: int = 300) -> dict[str, Any]:
        samples = [] if self.monitor is None else list(self.monitor.history)[-limit:]
        return {
            "samples": [s.to_dict() for s in samples],
            "calls": [c.to_dict() for c in self.calls.recent(limit)],
        }

    def suggestions(self, window: float = 60.0) -> list[dict[str, str]]:
        """Plain-language hints from what the guard has seen."""
        out: list[dict[str, str]] = []
        out += self._ledger_hints()
        out += self._cache_hints()
        out += self._monitor_hints(window)
        out += self._pool_hints()
        return out

    # -- internals -------------------------------------------------------

    def _usage_extra(self) -> dict[str, Any]:
        return {
            "ledger": {
                "capacity": format_vector(self.ledger.capacity),
                "used": format_vector(self.ledger.used()),
            }
        }

    def _ledger_hints(self) -> list[dict[str, str]]:
        led = self.ledger
        out = []
        if led.refusals:
            tried = led.grants + led.refusals
            out.append(_hint(
                "warning", "ledger",
                f"{led.refusals} of {tried} reservations were refused for lack of resources; "
                "raise the capacity (or the task's allocation), lower concurrency, or "
                "make requests declare smaller profiles",
            ))
        cap, used = led.capacity.get("memory", 0), led.used().get("memory", 0)
        if cap and used > 0.9 * cap:
            out.append(_hint(
                "warning", "ledger",
                f"{format_human('memory', used)} of {format_human('memory', cap)} "
                "memory is held; new work will be refused soon",
            ))
        return out

    def _cache_hints(self) -> list[dict[str, str]]:
        if self.cache is None:
            return []
        st = self.cache.stats
        out = []
        if st.hits + st.misses >= 20 and st.hit_rate < 0.5 and st.evictions:
            out.append(_hint(
                "warning", "cache",
                f"model cache hit rate is {st.hit_rate:.0%} with {st.evictions} evictions: the "
                "working set does not fit; give the cache more memory or send each "
                "model's requests to fewer processes",
            ))
        if st.pressure_evictions:
            out.append(_hint(
                "info", "cache",
                f"memory pressure evicted {st.pressure_evictions} cached model(s); memory "
                "outside the cache is growing or the threshold is low",
            ))
        if st.refused:
            out.append(_hint(
                "warning", "cache",
                f"{st.refused} model load(s) were refused: a model is larger than the "
                "memory left after in-use models",
            ))
        return out

    def _monitor_hints(self, window: float) -> list[dict[str, str]]:
        mon = self.monitor
        if mon is None:
            return []
        out = []
        rss = mon.trend("process.rss", window)
        if rss is not None and rss.direction == "rising":
            per_min = rss.slope_per_second * 60 / MIB
            out.append(_hint(
                "warning", "memory",
                f"process RSS is rising {per_min:.1f} MiB/min over the last {window:.0f} s: "
                "a leak, or caches without a bound",
            ))
        for metric, level in sorted(mon.levels().items()):
            if level in (Level.WARNING, Level.CRITICAL):
                out.append(_hint(level.value, "pressure", f"{metric} is at {level.value} level"))
        return out

    def _pool_hints(self) -> list[dict[str, str]]:
        out = []
        for name, pool in sorted(self.pools.items()):
            st = pool.stats()
            got = st["acquisitions"] or 0
            if got >= 10 and st["waits"] / got > 0.2:
                out.append(_hint(
                    "info", "pool",
                    f"pool {name}: {st['waits']} of {got} checkouts waited; raise max_size "
                    f"(now {st['max_size']}) if the backend allows",
                ))
            if got >= 20 and st["reuse_rate"] < 0.5:
                out.append(_hint(
                    "info", "pool",
                    f"pool {name}: only {st['reuse_rate']:.0%} of checkouts reused an object; "
                    "lengthen idle_timeout or fix failing health checks",
                ))
        return out


def _relieve(cache: ModelCache) -> None:
    cache.relieve_pressure()


def _hint(severity: str, topic: str, message: str) -> dict[str, str]:
    return {"severity": severity, "topic": topic, "message": message}


def _profiles(
    given: Profiles | Mapping[str, Mapping[str, object]] | str | Path | None,
) -> Profiles:
    if given is None:
        return Profiles()
    if isinstance(given, Profiles):
        return given
    if isinstance(given, str | Path):
        return Profiles.from_file(given)
    return Profiles(given)
