from __future__ import annotations

import asyncio
import logging
import sys
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import psutil
import pytest

from apportion.guard import CallHistory, profile_block, resource_monitored
from apportion.guard.calls import _max_rss as max_rss

MIB = 2**20


def test_records_each_call_with_its_name() -> None:
    history = CallHistory()

    @resource_monitored(history=history)
    def add(a: int, b: int) -> int:
        return a + b

    assert add(2, 3) == 5
    assert add(1, 1) == 2
    first, second = history.recent()
    assert second.name == first.name
    assert first.name == "test_records_each_call_with_its_name.<locals>.add"
    assert first.error is None
    assert first.wall_seconds >= 0 and first.cpu_seconds >= 0
    assert history.stats()[first.name]["calls"] == 2
    assert add.__name__ == "add"


def test_bare_decorator_uses_the_default_history() -> None:
    from apportion.guard import CALLS

    @resource_monitored
    def noop() -> None:
        return None

    CALLS.clear()
    noop()
    assert [r.name for r in CALLS.recent()] == [noop.__qualname__]


def test_peak_memory_of_a_real_allocation_without_tracemalloc() -> None:
    history = CallHistory()
    # Without tracemalloc the peak comes from the process's high-water RSS,
    # so the block must rise above what earlier tests already reached.
    headroom = max(0, max_rss() - int(psutil.Process().memory_info().rss))
    size = headroom + 48 * MIB

    @resource_monitored(history=history, name="alloc")
    def alloc() -> int:
        block = np.ones(size, dtype=np.uint8)
        return int(block[-1])

    assert not tracemalloc.is_tracing()
    alloc()
    rec = history.recent()[-1]
    # The block came and went inside the call: RSS is back, the peak is not.
    assert rec.peak_memory_delta is not None and rec.peak_memory_delta >= size - 8 * MIB
    assert rec.memory_delta is not None and rec.memory_delta < 16 * MIB


def test_peak_memory_with_tracemalloc_is_exact() -> None:
    history = CallHistory()

    @resource_monitored(history=history, name="alloc")
    def alloc() -> np.ndarray:
        return np.ones(8 * MIB, dtype=np.uint8)

    tracemalloc.start()
    try:
        kept = alloc()
    finally:
        tracemalloc.stop()
    rec = history.recent()[-1]
    assert rec.peak_memory_delta is not None
    assert 8 * MIB <= rec.peak_memory_delta < 9 * MIB
    del kept


def test_errors_are_recorded_and_raised() -> None:
    history = CallHistory()

    @resource_monitored(history=history, memory="off")
    def fail() -> None:
        raise KeyError("x")

    with pytest.raises(KeyError):
        fail()
    rec = history.recent()[-1]
    assert (rec.error, rec.memory_delta, rec.peak_memory_delta) == ("KeyError", None, None)
    assert history.stats()[rec.name]["errors"] == 1


def test_async_functions() -> None:
    history = CallHistory()

    @resource_monitored(history=history, name="handler")
    async def handler(x: int) -> int:
        await asyncio.sleep(0.01)
        return x + 1

    assert asyncio.run(handler(1)) == 2
    rec = history.recent()[-1]
    assert rec.name == "handler"
    assert rec.wall_seconds >= 0.005


def test_gpu_delta_through_torch_when_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    allocated = [1000]
    fake_torch = SimpleNamespace(
        cuda=SimpleNamespace(is_available=lambda: True, memory_allocated=lambda: allocated[0])
    )
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    history = CallHistory()

    @resource_monitored(history=history)
    def to_gpu() -> None:
        allocated[0] += 4096

    to_gpu()
    assert history.recent()[-1].gpu_memory_delta == 4096


def test_calls_are_logged_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    @resource_monitored(history=CallHistory(), name="logged", memory="off")
    def f() -> None:
        return None

    with caplog.at_level(logging.DEBUG, logger="apportion.guard.calls"):
        f()
    assert caplog.records[-1].getMessage().startswith("call logged wall=")


def test_history_is_bounded() -> None:
    history = CallHistory(maxlen=3)
    f = resource_monitored(history=history, name="f", memory="off")(lambda: None)
    for _ in range(5):
        f()
    assert len(history.recent()) == 3
    assert history.stats()["f"]["calls"] == 5


def busy() -> list[int]:
    return sorted(range(20000), key=lambda i: -i)


def test_profile_block_writes_html(tmp_path: Path) -> None:
    out = tmp_path / "prof" / "report.html"
    with profile_block(out, engine="cprofile") as report:
        busy()
        keep = np.ones(2 * MIB, dtype=np.uint8)
    assert report.path == out
    text = out.read_text()
    assert text.startswith("<!doctype html>")
    assert "busy" in text
    assert report.memory_peak is not None and report.memory_peak >= 2 * MIB
    assert "memory: traced peak" in report.text
    assert not tracemalloc.is_tracing()
    del keep


def test_profile_block_writes_text_without_memory(tmp_path: Path) -> None:
    out = tmp_path / "report.txt"
    with profile_block(out, engine="cprofile", memory=False) as report:
        busy()
    assert out.read_text() == report.text
    assert report.text.startswith("apportion guard profile: ")
    assert report.memory_peak is None


def test_pyinstrument_engine_needs_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyinstrument", None)
    with pytest.raises(ImportError), profile_block(engine="pyinstrument"):
        pass  # pragma: no cover
