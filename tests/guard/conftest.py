"""Fixtures for the guard tests: a fake NVML module (no GPU on the test
machines), installed where ``apportion.guard`` imports ``pynvml`` from."""

from __future__ import annotations

import sys
from types import SimpleNamespace
from typing import Any

import pytest

GIB = 2**30


class FakeNvml:
    """The few pynvml functions the guard calls, over a list of fake GPUs."""

    class NVMLError(Exception):
        pass

    def __init__(self, gpus: list[dict[str, Any]], *, broken_init: bool = False) -> None:
        self.gpus = gpus
        self.broken_init = broken_init
        self.inits = 0

    def nvmlInit(self) -> None:
        if self.broken_init:
            raise self.NVMLError("Driver Not Loaded")
        self.inits += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        gpu = self.gpus[handle]
        if gpu.get("memory_broken"):
            raise self.NVMLError("Unknown Error")
        return SimpleNamespace(
            total=gpu["total"], used=gpu["used"], free=gpu["total"] - gpu["used"]
        )

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        temp = self.gpus[handle].get("temperature")
        if temp is None:
            raise self.NVMLError("Not Supported")
        return int(temp)

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(gpu=self.gpus[handle].get("utilization", 0), memory=0)

    def nvmlDeviceGetUUID(self, handle: int) -> bytes:
        return f"GPU-fake-{handle}".encode()

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return b"NVIDIA H100 80GB HBM3"


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    """Two fake 80 GiB GPUs, 10 and 70 GiB used, at 45 and 83 degrees."""
    fake = FakeNvml([
        {"total": 80 * GIB, "used": 10 * GIB, "temperature": 45, "utilization": 30},
        {"total": 80 * GIB, "used": 70 * GIB, "temperature": 83, "utilization": 95},
    ])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    return fake


@pytest.fixture
def make_nvml() -> type[FakeNvml]:
    """The fake's class, for tests that need GPUs of their own."""
    return FakeNvml


@pytest.fixture
def no_task_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("APPORTION_RESOURCES", "APPORTION_DEVICES", "APPORTION_USAGE_FILE"):
        monkeypatch.delenv(name, raising=False)
