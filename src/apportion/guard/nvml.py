"""Optional NVIDIA GPU readings through NVML (``pynvml`` from nvidia-ml-py).

``pynvml`` is imported lazily and only when asked for; without it, without a
driver, or when any NVML call fails, GPU readings are simply absent. A broken
sensor must never take the guarded service down, so nothing here raises for a
failing GPU call. The tests drive these paths with a fake module object that
has the same functions, put in ``sys.modules["pynvml"]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from apportion.nvml import AUTO, NvmlChoice, NvmlModule, load_nvml, nvml_text

TEMPERATURE_GPU = 0
"""``NVML_TEMPERATURE_GPU``: the sensor on the GPU die."""


@dataclass(frozen=True, slots=True)
class GpuInfo:
    """A GPU as NVML lists it: local index (what ``cuda:N`` means), identity, size."""

    index: int
    uuid: str | None
    name: str | None
    memory_total: int


@dataclass(frozen=True, slots=True)
class GpuReading:
    """One sample of one GPU; a field is ``None`` when its sensor failed."""

    index: int
    memory_used: int | None
    memory_total: int | None
    temperature: float | None
    utilization: float | None

    @property
    def memory_percent(self) -> float | None:
        if self.memory_used is None or not self.memory_total:
            return None
        return 100.0 * self.memory_used / self.memory_total

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "memory_used": self.memory_used,
            "memory_total": self.memory_total,
            "memory_percent": _round(self.memory_percent),
            "temperature": self.temperature,
            "utilization": self.utilization,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


class Nvml:
    """An initialised NVML with its device handles, read once at open."""

    def __init__(self, module: NvmlModule, handles: list[Any]) -> None:
        self._m = module
        self._handles = handles

    @classmethod
    def open(cls, module: NvmlChoice = AUTO) -> Nvml | None:
        """NVML ready to read, or ``None`` when there is no usable NVML."""
        if module is None:
            return None
        if module is AUTO:
            module = load_nvml()
            if module is None:
                return None
        try:
            module.nvmlInit()
            count = int(module.nvmlDeviceGetCount())
            handles = [module.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except Exception:  # NVMLError and driver faults alike mean "no GPUs"
            return None
        return cls(module, handles)

    @property
    def count(self) -> int:
        return len(self._handles)

    def devices(self) -> list[GpuInfo]:
        """Every GPU NVML sees whose memory size can be read."""
        out: list[GpuInfo] = []
        for index, handle in enumerate(self._handles):
            total = self._call(lambda h=handle: int(self._m.nvmlDeviceGetMemoryInfo(h).total))
            if total is None:
                continue
            uuid = self._call(lambda h=handle: nvml_text(self._m.nvmlDeviceGetUUID(h)))
            name = self._call(lambda h=handle: nvml_text(self._m.nvmlDeviceGetName(h)))
            out.append(GpuInfo(index, uuid, name, total))
        return out

    def read(self, index: int) -> GpuReading:
        handle = self._handles[index]
        mem = self._call(lambda: self._m.nvmlDeviceGetMemoryInfo(handle))
        temp = self._call(lambda: float(self._m.nvmlDeviceGetTemperature(handle, TEMPERATURE_GPU)))
        util = self._call(lambda: float(self._m.nvmlDeviceGetUtilizationRates(handle).gpu))
        used = None if mem is None else int(mem.used)
        total = None if mem is None else int(mem.total)
        return GpuReading(index, used, total, temp, util)

    def read_all(self) -> list[GpuReading]:
        return [self.read(i) for i in range(len(self._handles))]

    def free_memory(self, index: int) -> int | None:
        mem = self._call(lambda: self._m.nvmlDeviceGetMemoryInfo(self._handles[index]))
        return None if mem is None else int(mem.free)

    @staticmethod
    def _call(fn: Any) -> Any:
        try:
            return fn()
        except Exception:  # a failing sensor reads as absent
            return None


# AUTO, NvmlChoice and NvmlModule are apportion.nvml's, named here for the guard's modules.
__all__ = [
    "AUTO",
    "TEMPERATURE_GPU",
    "GpuInfo",
    "GpuReading",
    "Nvml",
    "NvmlChoice",
    "NvmlModule",
]
