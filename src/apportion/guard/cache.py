"""A model cache that knows what each entry weighs and gives memory back.

Every entry holds its size in the :class:`LocalLedger`, so the cache and the
rest of the service share one account. A load that would not fit evicts the
least recently used entries first and is refused, before the loader runs,
when even an empty cache could not hold it. When memory pressure passes the
threshold (85 % by default), :meth:`ModelCache.relieve_pressure` evicts until
it is back under. Entries in use (:meth:`ModelCache.use`) are never evicted,
so a model is not pulled from under a running request.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import psutil

from apportion.core.resources import format_human, format_quantity, parse_quantity
from apportion.guard.errors import InsufficientHostResources, Short
from apportion.guard.ledger import LocalLedger, wake_future
from apportion.guard.sizing import Size, estimate_size

log = logging.getLogger("apportion.guard.cache")

DEFAULT_PRESSURE_THRESHOLD = 0.85


@dataclass(slots=True)
class CacheEntry:
    """One cached value with what it holds in the ledger."""

    key: str
    value: Any
    held: dict[str, int]
    size: Size
    loaded_at: float
    load_seconds: float
    last_used: float
    hits: int = 0
    pins: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "memory": format_quantity("memory", self.size.memory),
            "gpu_memory": format_quantity("gpu_memory", self.size.gpu_memory),
            "held": {r: format_quantity(r, q) for r, q in self.held.items()},
            "hits": self.hits,
            "in_use": self.pins,
            "load_seconds": round(self.load_seconds, 4),
        }


@dataclass(slots=True)
class CacheStats:
    hits: int = 0
    misses: int = 0
    loads: int = 0
    load_failures: int = 0
    refused: int = 0
    waits: int = 0
    evictions: int = 0
    evicted_bytes: int = 0
    pressure_evictions: int = 0
    bytes: int = 0
    gpu_bytes: int = 0
    peak_bytes: int = 0
    entries: int = 0
    evicted_keys: list[str] = field(default_factory=list)

    @property
    def hit_rate(self) -> float:
        looked = self.hits + self.misses
        return self.hits / looked if looked else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": round(self.hit_rate, 4),
            "loads": self.loads,
            "load_failures": self.load_failures,
            "refused": self.refused,
            "waits": self.waits,
            "evictions": self.evictions,
            "pressure_evictions": self.pressure_evictions,
            "evicted_bytes": self.evicted_bytes,
            "bytes": self.bytes,
            "gpu_bytes": self.gpu_bytes,
            "peak_bytes": self.peak_bytes,
            "entries": self.entries,
        }


class _KeyLock:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0


EvictHook = Callable[[CacheEntry], None]
Sizer = Callable[[Any], Size]


def torch_empty_cache(entry: CacheEntry) -> None:
    """Give torch's cached CUDA blocks back to the driver after a GPU entry
    leaves; only when torch is already imported (we never import it)."""
    torch = sys.modules.get("torch")
    if torch is None or not (entry.size.gpu_memory or entry.held.get("gpu_memory")):
        return
    with contextlib.suppress(Exception):  # a failing driver call must not break eviction
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def budget_pressure(ledger: LocalLedger) -> Callable[[], float]:
    """Pressure as the larger of system memory use and this process's RSS
    over the ledger's memory capacity (its budget), both as fractions."""
    process = psutil.Process()
    budget = ledger.capacity.get("memory", 0)

    def pressure() -> float:
        system = psutil.virtual_memory().percent / 100.0
        own = process.memory_info().rss / budget if budget else 0.0
        return max(system, own)

    return pressure


class ModelCache:
    """Least-recently-used cache of loaded models, accounted in a ledger.

    Either share the service's ``ledger`` (entries then compete with
    reservations for the same memory, and reservations made with
    ``reclaim=True`` may evict entries), or give a ``budget`` alone for a
    private one. With both, ``budget`` also caps the cache's own bytes.
    """

    def __init__(
        self,
        ledger: LocalLedger | None = None,
        *,
        budget: int | str | None = None,
        pressure_threshold: float = DEFAULT_PRESSURE_THRESHOLD,
        pressure: Callable[[], float] | None = None,
        sizer: Sizer = estimate_size,
        on_evict: Iterable[EvictHook] = (),
        free_gpu_on_evict: bool = True,
    ) -> None:
        cap = None if budget is None else parse_quantity("memory", budget, "budget")
        if ledger is None and cap is None:
            raise ValueError("ModelCache needs a ledger, a budget, or both")
        self.ledger = ledger if ledger is not None else LocalLedger({"memory": cap or 0})
        self._own = LocalLedger({"memory": cap}) if ledger is not None and cap else None
        self.budget = cap
        self.pressure_threshold = pressure_threshold
        self.pressure = pressure if pressure is not None else budget_pressure(self.ledger)
        self._sizer = sizer
        self._hooks = list(on_evict)
        if free_gpu_on_evict:
            self._hooks.append(torch_empty_cache)
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self._lock = threading.RLock()
        self._loading: dict[str, _KeyLock] = {}
        self._waiters: list[Callable[[], None]] = []
        self.stats = CacheStats()
        self.ledger.add_reclaimer(self.reclaim)

    # -- looking up -----------------------------------------------------

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[str]:
        """Keys from least to most recently used."""
        with self._lock:
            return list(self._entries)

    def get(self, key: str) -> Any | None:
        """The cached value (a hit), or ``None`` without loading (a miss)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.stats.misses += 1
                return None
            self._touch(entry)
            return entry.value

    def get_or_load(
        self,
        key: str,
        loader: Callable[[], Any],
        *,
        profile: object = None,
        size: int | str | None = None,
        gpu_memory: int | str | None = None,
        device: int | None = None,
    ) -> Any:
        """The cached value, loading it with ``loader()`` on a miss.

        Declare what the load needs (``profile``, or ``size``/``gpu_memory``)
        to have it refused with :class:`InsufficientHostResources` before the
        loader allocates anything; without a declaration the cache measures
        the loaded value and evicts (or refuses) afterwards.
        """
        declared = self._declared(profile, size, gpu_memory, device)
        return self._fetch_counted(key, loader, declared, pin=False)[0]

    @contextlib.contextmanager
    def use(
        self,
        key: str,
        loader: Callable[[], Any],
        *,
        profile: object = None,
        size: int | str | None = None,
        gpu_memory: int | str | None = None,
        device: int | None = None,
    ) -> Iterator[Any]:
        """Like :meth:`get_or_load`, and the entry cannot be evicted until the
        block ends."""
        declared = self._declared(profile, size, gpu_memory, device)
        value, entry = self._fetch_counted(key, loader, declared, pin=True)
        try:
            yield value
        finally:
            self._unpin(entry)

    @contextlib.asynccontextmanager
    async def use_async(
        self,
        key: str,
        loader: Callable[[], Any],
        *,
        profile: object = None,
        size: int | str | None = None,
        gpu_memory: int | str | None = None,
        device: int | None = None,
        timeout: float = 0.0,
    ) -> AsyncIterator[Any]:
        """:meth:`use` for coroutines, waiting up to ``timeout`` seconds for
        room when every entry that could make it is in use: the wait ends
        when a request unpins a model or the ledger gets something back.
        The loader itself runs on the event loop thread."""
        declared = self._declared(profile, size, gpu_memory, device)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        first = True
        while True:
            # Register before trying, so a release between a failed try and
            # the wait cannot be missed.
            fut: asyncio.Future[None] = loop.create_future()
            wake = functools.partial(wake_future, loop, fut)
            with self._lock:
                self._waiters.append(wake)
            self.ledger.notify_on_release(wake)
            try:
                value, entry = self._fetch(key, loader, declared, pin=True, count=first)
                break
            except InsufficientHostResources:
                remaining = deadline - loop.time()
                with self._lock:
                    if remaining <= 0:
                        self.stats.refused += 1
                        raise
                    self.stats.waits += first
                first = False
                with contextlib.suppress(TimeoutError):
                    # Not wait_for: on 3.11 it can swallow a cancel that
                    # lands as the wake-up does.
                    async with asyncio.timeout(remaining):
                        await fut
        try:
            yield value
        finally:
            self._unpin(entry)

    # -- evicting -------------------------------------------------------

    def evict(self, key: str) -> bool:
        """Drop ``key`` now (unless it is in use); True when it was dropped."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.pins:
                return False
            self._drop(entry)
        self._after_evict([entry])
        return True

    def clear(self) -> int:
        with self._lock:
            victims = [e for e in self._entries.values() if not e.pins]
            for entry in victims:
                self._drop(entry)
        self._after_evict(victims)
        return len(victims)

    def reclaim(self, need: Mapping[str, int]) -> int:
        """Evict LRU entries until ``need`` (resource -> amount) is freed or
        nothing evictable holds those resources; the ledger calls this."""
        freed: dict[str, int] = {}
        victims: list[CacheEntry] = []
        with self._lock:
            for entry in list(self._entries.values()):
                if all(freed.get(r, 0) >= q for r, q in need.items()):
                    break
                if entry.pins or not any(entry.held.get(r) for r in need):
                    continue
                for r, q in entry.held.items():
                    freed[r] = freed.get(r, 0) + q
                self._drop(entry)
                victims.append(entry)
        self._after_evict(victims)
        return sum(freed.values())

    def relieve_pressure(self) -> int:
        """Evict LRU entries while pressure is above the threshold; the
        number evicted. Call it on each monitor sample (``Guard`` does)."""
        evicted = 0
        while self.pressure() > self.pressure_threshold:
            with self._lock:
                entry = next((e for e in self._entries.values() if not e.pins), None)
                if entry is None:
                    break
                self._drop(entry)
                self.stats.pressure_evictions += 1
            self._after_evict([entry])
            evicted += 1
        return evicted

    def status(self) -> dict[str, Any]:
        with self._lock:
            entries = [e.to_dict() for e in reversed(self._entries.values())]
            stats = self.stats.to_dict()
        return {
            "stats": stats,
            "budget": None if self.budget is None else format_quantity("memory", self.budget),
            "pressure_threshold": self.pressure_threshold,
            "entries": entries,
        }

    # -- internals ------------------------------------------------------

    def _wake(self) -> None:
        with self._lock:
            if not self._waiters:
                return
            wakers, self._waiters = self._waiters, []
        for wake in wakers:
            wake()

    def _touch(self, entry: CacheEntry, count: bool = True) -> None:
        self._entries.move_to_end(entry.key)
        entry.hits += count
        entry.last_used = time.monotonic()
        self.stats.hits += count

    @contextlib.contextmanager
    def _key_lock(self, key: str) -> Iterator[None]:
        # One loader per key: a second caller waits and then finds the entry.
        # The lock is dropped when its last user leaves, never while one
        # still waits on it (or two loaders could run for one key).
        with self._lock:
            slot = self._loading.get(key)
            if slot is None:
                slot = self._loading[key] = _KeyLock()
            slot.users += 1
        try:
            with slot.lock:
                yield
        finally:
            with self._lock:
                slot.users -= 1
                if not slot.users:
                    del self._loading[key]

    def _declared(
        self, profile: object, size: int | str | None, gpu: int | str | None, device: int | None
    ) -> dict[str, int] | None:
        if profile is not None:
            req = self.ledger.profiles.resolve(profile)
            return dict(self.ledger.resolve_device(req, device))
        if size is None and gpu is None:
            return None
        wanted: dict[str, object] = {"memory": size or 0, "gpu_memory": gpu or 0}
        req = self.ledger.profiles.resolve(wanted)
        return dict(self.ledger.resolve_device(req, device))

    def _fetch_counted(
        self, key: str, loader: Callable[[], Any], declared: dict[str, int] | None, pin: bool
    ) -> tuple[Any, CacheEntry]:
        try:
            return self._fetch(key, loader, declared, pin=pin, count=True)
        except InsufficientHostResources:
            with self._lock:
                self.stats.refused += 1
            raise

    def _fetch(
        self,
        key: str,
        loader: Callable[[], Any],
        declared: dict[str, int] | None,
        *,
        pin: bool,
        count: bool,
    ) -> tuple[Any, CacheEntry]:
        """The entry for ``key`` (pinned when ``pin``), loading it on a miss.
        ``count`` is False on a retry, so each look-up is one hit or miss."""
        hit = self._hit(key, pin, count)
        if hit is not None:
            return hit.value, hit
        with self._key_lock(key):
            hit = self._hit(key, pin, count)  # loaded by the caller we waited for
            if hit is not None:
                return hit.value, hit
            if count:
                with self._lock:
                    self.stats.misses += 1
            return self._load(key, loader, declared, pin)

    def _hit(self, key: str, pin: bool, count: bool = True) -> CacheEntry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._touch(entry, count)
                entry.pins += pin
            return entry

    def _unpin(self, entry: CacheEntry) -> None:
        with self._lock:
            entry.pins -= 1
        self._wake()

    def _load(
        self, key: str, loader: Callable[[], Any], declared: dict[str, int] | None, pin: bool
    ) -> tuple[Any, CacheEntry]:
        held: dict[str, int] = {}
        if declared:
            self._make_room(declared, key)
            held = declared
        started = time.perf_counter()
        try:
            value = loader()
        except BaseException:
            self._give(held)
            with self._lock:
                self.stats.load_failures += 1
            raise
        seconds = time.perf_counter() - started
        size = self._sizer(value)
        held = self._settle(key, held, size)
        entry = CacheEntry(
            key, value, held, size, time.time(), seconds, time.monotonic(), pins=int(pin)
        )
        self._insert(entry)
        return value, entry

    def _settle(self, key: str, held: dict[str, int], size: Size) -> dict[str, int]:
        """Make the hold match the measured size: give back a surplus, take
        (evicting others) a deficit, or refuse the value."""
        wanted = dict(held)
        if size.memory:
            wanted["memory"] = size.memory
        if size.gpu_memory > held.get("gpu_memory", 0):
            wanted["gpu_memory"] = size.gpu_memory
        if wanted != held:
            try:
                self._grow(held, wanted, key)
            except InsufficientHostResources:
                self._give(held)
                raise
        return wanted

    def _make_room(self, vector: Mapping[str, int], key: str) -> None:
        """Hold ``vector`` for a new entry, evicting LRU entries as needed."""
        self._grow({}, vector, key)

    def _grow(self, held: Mapping[str, int], wanted: Mapping[str, int], key: str) -> None:
        if self._adjust(held, wanted):
            return
        if not self._reachable(held, wanted):
            # Evicting everything would still not make room: refuse now rather
            # than empty the cache for a load that cannot happen anyway.
            raise InsufficientHostResources(self._shorts(held, wanted), what=key)
        while not self._adjust(held, wanted):
            with self._lock:
                victim = next((e for e in self._entries.values() if not e.pins), None)
                if victim is None:
                    raise InsufficientHostResources(self._shorts(held, wanted), what=key)
                self._drop(victim)
            self._after_evict([victim])

    def _reachable(self, held: Mapping[str, int], wanted: Mapping[str, int]) -> bool:
        """Whether the free amounts plus what every unpinned entry holds
        cover the growth from ``held`` to ``wanted``."""
        free = dict(self.ledger.free())
        own = self._own
        with self._lock:
            evictable = [e.held for e in self._entries.values() if not e.pins]
        for resource, quantity in wanted.items():
            need = quantity - held.get(resource, 0)
            if need <= 0:
                continue
            room = sum(h.get(resource, 0) for h in evictable)
            if room + free.get(resource, 0) < need:
                return False
            if resource == "memory" and own is not None and room + own.free()["memory"] < need:
                return False
        return True

    def _adjust(self, held: Mapping[str, int], wanted: Mapping[str, int]) -> bool:
        """Move the hold from ``held`` to ``wanted`` in the cache's own budget
        and the ledger together, or in neither."""
        own = self._own
        mem_held = {"memory": held["memory"]} if held.get("memory") else {}
        mem_wanted = {"memory": wanted["memory"]} if wanted.get("memory") else {}
        if own is not None and not own.adjust(mem_held, mem_wanted):
            return False
        if self.ledger.adjust(held, wanted):
            return True
        if own is not None:
            own.adjust(mem_wanted, mem_held)
        return False

    def _give(self, held: Mapping[str, int]) -> None:
        if held:
            self._adjust(held, {})

    def _shorts(self, held: Mapping[str, int], wanted: Mapping[str, int]) -> list[Short]:
        extra = {r: q - held.get(r, 0) for r, q in wanted.items() if q > held.get(r, 0)}
        shorts = self.ledger.shortages(extra)
        own = self._own
        if own is not None:
            free, mem = own.free()["memory"], extra.get("memory", 0)
            if free < mem and not any(s.resource == "memory" for s in shorts):
                shorts.append(Short("memory", free, mem))
        if not shorts:  # room appeared after the last try; report the ask
            shorts = [Short(r, 0, q) for r, q in extra.items()]
        return shorts

    def _insert(self, entry: CacheEntry) -> None:
        with self._lock:
            self._entries[entry.key] = entry
            stats = self.stats
            stats.loads += 1
            stats.bytes += entry.size.memory
            stats.gpu_bytes += entry.size.gpu_memory
            stats.peak_bytes = max(stats.peak_bytes, stats.bytes)
            stats.entries = len(self._entries)

    def _drop(self, entry: CacheEntry) -> None:
        """Forget ``entry`` and give its hold back; caller holds the lock."""
        del self._entries[entry.key]
        self._give(entry.held)
        stats = self.stats
        stats.evictions += 1
        stats.evicted_bytes += entry.size.memory
        stats.bytes -= entry.size.memory
        stats.gpu_bytes -= entry.size.gpu_memory
        stats.entries = len(self._entries)
        stats.evicted_keys.append(entry.key)
        del stats.evicted_keys[:-100]

    def _after_evict(self, entries: list[CacheEntry]) -> None:
        for entry in entries:
            log.info(
                "evicted %s (%s)", entry.key, format_human("memory", entry.size.memory)
            )
            for hook in self._hooks:
                try:
                    hook(entry)
                except Exception:  # a broken hook must not stop eviction
                    log.exception("eviction hook failed for %s", entry.key)
            # Drop our reference so the buffers go as soon as callers drop theirs.
            entry.value = None
