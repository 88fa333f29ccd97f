"""The model cache with real memory: numpy arrays, measured with tracemalloc
and psutil. Allocations stay under 250 MiB."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import numpy as np
import psutil
import pytest

from apportion.guard import (
    CacheEntry,
    Guard,
    InsufficientHostResources,
    LocalLedger,
    ModelCache,
    Size,
    estimate_size,
)

MIB = 2**20


def model(mib: int) -> Callable[[], np.ndarray]:
    """A loader for a "model" of ``mib`` MiB whose pages are really touched."""

    def load() -> np.ndarray:
        return np.ones(mib * MIB, dtype=np.uint8)

    return load


@pytest.fixture
def traced() -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


def traced_now() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


def test_load_over_budget_is_refused_before_allocating(traced: None) -> None:
    cache = ModelCache(budget="64Mi", pressure=lambda: 0.0)
    called = []

    def loader() -> np.ndarray:
        called.append(True)
        return np.ones(100 * MIB, dtype=np.uint8)

    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    with pytest.raises(InsufficientHostResources) as err:
        cache.get_or_load("big", loader, size="100Mi")
    peak = tracemalloc.get_traced_memory()[1] - before
    assert called == []
    assert peak < MIB
    assert err.value.message == (
        "not enough resources for big: memory: 64Mi available, 100Mi required"
    )
    assert cache.stats.refused == 1
    assert cache.ledger.free() == {"memory": 64 * MIB}


def test_guard_validate_refuses_a_model_that_cannot_fit(traced: None) -> None:
    guard = Guard.create(
        capacity={"memory": "64Mi"},
        profiles={"musicgen": {"memory": "100Mi"}},
        monitor=False,
    )
    with pytest.raises(InsufficientHostResources) as err:
        guard.validate("musicgen")
        np.ones(100 * MIB, dtype=np.uint8)  # pragma: no cover - never reached
    assert err.value.message == (
        "not enough resources for musicgen: memory: 64Mi available, 100Mi required"
    )
    assert tracemalloc.get_traced_memory()[1] < 10 * MIB


def test_lru_eviction_order_and_memory_is_freed(traced: None) -> None:
    # 40 MiB blocks: above glibc's largest mmap threshold (32 MiB), so each
    # is its own mapping and freeing it really lowers RSS.
    cache = ModelCache(budget="130Mi", pressure=lambda: 0.0)
    base_traced, base_rss = traced_now(), rss()
    for key in ("a", "b", "c"):
        cache.get_or_load(key, model(40), size="40Mi")
    assert traced_now() - base_traced >= 120 * MIB
    cache.get_or_load("a", model(40))  # a hit: "b" is now least recent
    assert cache.keys() == ["b", "c", "a"]
    loaded_rss = rss()
    assert loaded_rss - base_rss >= 110 * MIB

    cache.get_or_load("d", model(40), size="40Mi")

    assert cache.keys() == ["c", "a", "d"]
    assert cache.stats.evicted_keys == ["b"]
    assert traced_now() - base_traced < 125 * MIB  # b's 40 MiB went, d's came
    cache.get_or_load("e", model(80), size="80Mi")
    assert cache.stats.evicted_keys == ["b", "c", "a"]
    assert cache.keys() == ["d", "e"]
    assert cache.stats.to_dict() | {"peak_bytes": 0} == {
        "hits": 1,
        "misses": 5,
        "hit_rate": 0.1667,
        "loads": 5,
        "load_failures": 0,
        "refused": 0,
        "waits": 0,
        "evictions": 3,
        "pressure_evictions": 0,
        "evicted_bytes": 120 * MIB,
        "bytes": 120 * MIB,
        "gpu_bytes": 0,
        "peak_bytes": 0,
        "entries": 2,
    }
    cache.clear()
    assert traced_now() - base_traced < 5 * MIB
    assert loaded_rss - rss() >= 100 * MIB
    assert cache.ledger.free() == {"memory": 130 * MIB}


def test_pressure_evicts_lru_until_under_threshold(traced: None) -> None:
    base = traced_now()

    def pressure() -> float:  # the share of a 100 MiB budget in use, measured
        return (tracemalloc.get_traced_memory()[0] - base) / (100 * MIB)

    cache = ModelCache(budget="1Gi", pressure=pressure, pressure_threshold=0.5)
    for key in ("a", "b", "c"):
        cache.get_or_load(key, model(20))
    cache.get_or_load("a", model(20))
    assert cache.keys() == ["b", "c", "a"]
    assert pressure() >= 0.6

    assert cache.relieve_pressure() == 1

    assert cache.keys() == ["c", "a"]
    assert cache.stats.pressure_evictions == 1
    assert pressure() <= 0.5
    assert cache.relieve_pressure() == 0


def test_undeclared_size_is_measured_and_accounted() -> None:
    cache = ModelCache(budget="100Mi", pressure=lambda: 0.0)
    cache.get_or_load("a", model(10))
    assert cache.ledger.free() == {"memory": 90 * MIB}
    cache.get_or_load("b", model(95))
    assert cache.keys() == ["b"]
    assert cache.ledger.free() == {"memory": 5 * MIB}


def test_declared_size_is_corrected_to_the_measured_size() -> None:
    cache = ModelCache(budget="100Mi", pressure=lambda: 0.0)
    cache.get_or_load("a", model(10), size="40Mi")
    assert cache.ledger.free() == {"memory": 90 * MIB}
    assert cache.ledger.holds == 1


def test_measured_value_that_cannot_fit_is_dropped() -> None:
    cache = ModelCache(budget="32Mi", pressure=lambda: 0.0)
    with pytest.raises(InsufficientHostResources):
        cache.get_or_load("a", model(40))
    assert "a" not in cache
    assert cache.ledger.free() == {"memory": 32 * MIB}
    assert cache.ledger.holds == 0


def test_loader_failure_gives_the_hold_back() -> None:
    cache = ModelCache(budget="32Mi", pressure=lambda: 0.0)

    def broken() -> None:
        raise OSError("weights file missing")

    with pytest.raises(OSError):
        cache.get_or_load("a", broken, size="16Mi")
    assert cache.ledger.free() == {"memory": 32 * MIB}
    assert cache.stats.load_failures == 1


def test_models_in_use_are_not_evicted() -> None:
    cache = ModelCache(budget="50Mi", pressure=lambda: 0.0)
    with cache.use("a", model(30), size="30Mi") as a:
        with pytest.raises(InsufficientHostResources):
            cache.get_or_load("b", model(30), size="30Mi")
        assert cache.keys() == ["a"]
        assert int(a[0]) == 1
    cache.get_or_load("b", model(30), size="30Mi")
    assert cache.keys() == ["b"]


def test_use_async_waits_for_a_model_to_be_released() -> None:
    cache = ModelCache(budget="50Mi", pressure=lambda: 0.0)

    async def main() -> list[str]:
        order: list[str] = []

        async def first() -> None:
            async with cache.use_async("a", model(30), size="30Mi"):
                order.append("a in use")
                await asyncio.sleep(0.05)
            order.append("a released")

        async def second() -> None:
            await asyncio.sleep(0)
            async with cache.use_async("b", model(30), size="30Mi", timeout=30.0):
                order.append("b in use")

        await asyncio.gather(first(), second())
        return order

    assert asyncio.run(main()) == ["a in use", "a released", "b in use"]
    assert cache.keys() == ["b"]
    assert (cache.stats.waits, cache.stats.misses, cache.stats.refused) == (1, 2, 0)


def test_use_async_refuses_after_its_timeout() -> None:
    cache = ModelCache(budget="50Mi", pressure=lambda: 0.0)

    async def main() -> None:
        async with (
            cache.use_async("a", model(30), size="30Mi"),
            cache.use_async("b", model(30), size="30Mi", timeout=0.02),
        ):
            pass  # pragma: no cover

    with pytest.raises(InsufficientHostResources):
        asyncio.run(main())
    assert (cache.stats.waits, cache.stats.refused) == (1, 1)
    assert cache.ledger.free() == {"memory": 20 * MIB}


def test_shared_ledger_reservations_can_reclaim_cache_memory() -> None:
    ledger = LocalLedger({"memory": 64 * MIB})
    cache = ModelCache(ledger, pressure=lambda: 0.0)
    cache.get_or_load("a", model(20), size="20Mi")
    cache.get_or_load("b", model(20), size="20Mi")
    with pytest.raises(InsufficientHostResources):
        ledger.reserve({"memory": "40Mi"}).acquire()
    with ledger.reserve({"memory": "40Mi"}, reclaim=True):
        assert cache.keys() == ["b"]
    assert ledger.free() == {"memory": 44 * MIB}


def test_cache_budget_caps_its_share_of_a_shared_ledger() -> None:
    ledger = LocalLedger({"memory": 200 * MIB})
    cache = ModelCache(ledger, budget="40Mi", pressure=lambda: 0.0)
    cache.get_or_load("a", model(20), size="20Mi")
    cache.get_or_load("b", model(20), size="20Mi")
    cache.get_or_load("c", model(20), size="20Mi")
    assert cache.keys() == ["b", "c"]
    assert ledger.free() == {"memory": 160 * MIB}


def test_one_loader_per_key_under_concurrency() -> None:
    cache = ModelCache(budget="64Mi", pressure=lambda: 0.0)
    loads = []
    gate = threading.Event()

    def slow() -> np.ndarray:
        loads.append(1)
        gate.wait(5)
        return np.ones(MIB, dtype=np.uint8)

    threads = [threading.Thread(target=cache.get_or_load, args=("k", slow)) for _ in range(4)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join()
    assert loads == [1]
    assert cache.stats.loads == 1


def test_eviction_hooks_and_torch_empty_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    emptied = []
    fake_torch = SimpleNamespace(
        cuda=SimpleNamespace(is_available=lambda: True, empty_cache=lambda: emptied.append(1))
    )
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    ledger = LocalLedger({"memory": 64 * MIB, "gpu_memory": 100 * MIB})
    seen: list[str] = []

    def hook(entry: CacheEntry) -> None:
        seen.append(entry.key)

    cache = ModelCache(ledger, on_evict=[hook], pressure=lambda: 0.0)
    cache.get_or_load("cpu-only", model(1), size="1Mi")
    cache.get_or_load("on-gpu", model(1), size="1Mi", gpu_memory="60Mi")
    cache.get_or_load("other", model(1), size="1Mi", gpu_memory="60Mi")
    assert seen == ["cpu-only", "on-gpu"]
    assert emptied == [1]
    assert ledger.free()["gpu_memory"] == 40 * MIB


def test_estimate_size_counts_buffers_in_containers() -> None:
    arrays = {"w": np.zeros(1000, dtype=np.float32), "b": [np.zeros(10, dtype=np.float64)]}
    size = estimate_size(arrays)
    assert 4080 <= size.memory < 6000
    gpu_tensor = SimpleNamespace(nbytes=2048, is_cuda=True)
    assert estimate_size(gpu_tensor) == Size(0, 2048)

    class Module:
        def parameters(self) -> list[object]:
            return [gpu_tensor, SimpleNamespace(nbytes=512, device="cpu")]

        def buffers(self) -> list[object]:
            return []

    assert estimate_size(Module()).gpu_memory == 2048


def test_concurrent_loads_and_evictions_keep_the_ledger_exact() -> None:
    cache = ModelCache(budget="8Mi", pressure=lambda: 0.0)

    def worker(seed: int) -> None:
        for i in range(60):
            key = f"k{(seed + i) % 5}"
            with (
                contextlib.suppress(InsufficientHostResources),
                cache.use(key, lambda: bytearray(MIB), size="1Mi"),
            ):
                pass
            if i % 7 == seed % 7:
                cache.evict(key)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    held = sum(entry.held["memory"] for entry in cache._entries.values())
    assert cache.ledger.free()["memory"] + held == 8 * MIB
    assert cache.ledger.holds == len(cache)
    assert cache._loading == {}


def test_a_load_that_can_never_fit_evicts_nothing() -> None:
    # Seen on a real H200: a 200Gi request on a 135 GB device emptied the
    # cache before it was refused.
    cache = ModelCache(budget="64Mi", pressure=lambda: 0.0, sizer=lambda _: Size())
    cache.get_or_load("a", lambda: "A", size="30Mi")
    cache.get_or_load("b", lambda: "B", size="30Mi")
    with pytest.raises(InsufficientHostResources) as err:
        cache.get_or_load("huge", lambda: "H", size="100Mi")
    assert err.value.message == (
        "not enough resources for huge: memory: 4Mi available, 100Mi required"
    )
    assert cache.keys() == ["a", "b"]
    assert cache.stats.evictions == 0
    # One that fits once the least recently used entry goes still evicts it.
    cache.get_or_load("c", lambda: "C", size="30Mi")
    assert cache.keys() == ["b", "c"]
    assert cache.stats.evictions == 1
