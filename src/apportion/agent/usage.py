"""Live usage of this machine, sampled for each heartbeat.

A heartbeat must go out even when a sensor is broken, so nothing here raises
for a missing or failing sensor: the reading is ``None`` instead. Running
tasks are the agent's own knowledge and are added by the agent, not here.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

from apportion.agent.discovery import existing_ancestor
from apportion.agent.gpu_discovery import nvml_call
from apportion.nvml import NvmlModule, nvml_text

_MAX_EVENTS_PER_POLL = 1000
_cpu_started = False


def sample_usage(
    work_dir: Path, nvml: NvmlModule | None, *, xids: XidCounter | None = None
) -> dict[str, Any]:
    """One usage sample: CPU, memory, the work directory's disk, load and GPUs.

    ``cpu_percent`` covers the time since the previous sample in this process,
    so it is ``None`` on the first one. Memory "used" is total minus
    available (what ``free`` calls available is reclaimable cache, not use).
    """
    if xids is not None:
        xids.poll()
    return {
        "cpu_percent": _cpu_percent(),
        **_memory(),
        **_disk(work_dir),
        "load_average": _load_average(),
        "gpus": sample_gpus(nvml, xids),
    }


def _cpu_percent() -> float | None:
    global _cpu_started
    try:
        value = float(psutil.cpu_percent(interval=None))
    except (OSError, psutil.Error):
        return None
    if not _cpu_started:
        # psutil's first reading has no previous one to compare with; it is a
        # meaningless 0.0, and a heartbeat claiming an idle node would mislead.
        _cpu_started = True
        return None
    return value


def _memory() -> dict[str, Any]:
    try:
        vm = psutil.virtual_memory()
    except (OSError, psutil.Error):
        return {"memory_used": None, "memory_total": None, "memory_percent": None}
    return {
        "memory_used": int(vm.total - vm.available),
        "memory_total": int(vm.total),
        "memory_percent": float(vm.percent),
    }


def _disk(work_dir: Path) -> dict[str, Any]:
    try:
        du = psutil.disk_usage(str(existing_ancestor(work_dir)))
    except (OSError, psutil.Error):
        return {"disk_used": None, "disk_total": None, "disk_percent": None}
    return {"disk_used": int(du.used), "disk_total": int(du.total), "disk_percent": du.percent}


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def sample_gpus(nvml: NvmlModule | None, xids: XidCounter | None = None) -> list[dict[str, Any]]:
    """Per-GPU readings, in NVML index order. A GPU NVML cannot reach still
    gets an entry (all ``None``), so a lost card is visible, not silent."""
    if nvml is None:
        return []
    try:
        nvml.nvmlInit()
    except nvml.NVMLError:
        return []
    try:
        count = int(nvml_call(nvml, "nvmlDeviceGetCount") or 0)
        return [_sample_gpu(nvml, index, xids) for index in range(count)]
    finally:
        nvml.nvmlShutdown()


def _sample_gpu(nvml: NvmlModule, index: int, xids: XidCounter | None) -> dict[str, Any]:
    reading: dict[str, Any] = {
        "index": index,
        "uuid": None,
        "utilization_percent": None,
        "memory_used": None,
        "memory_total": None,
        "temperature_c": None,
        "ecc_errors": None,
        "xid_errors": xids.count(index) if xids else None,
        "last_xid": xids.last(index) if xids else None,
    }
    handle = nvml_call(nvml, "nvmlDeviceGetHandleByIndex", index)
    if handle is None:
        return reading
    uuid = nvml_call(nvml, "nvmlDeviceGetUUID", handle)
    if uuid is not None:
        reading["uuid"] = nvml_text(uuid)
    util = nvml_call(nvml, "nvmlDeviceGetUtilizationRates", handle)
    if util is not None:
        reading["utilization_percent"] = int(util.gpu)
    memory = nvml_call(nvml, "nvmlDeviceGetMemoryInfo", handle)
    if memory is not None:
        reading["memory_used"] = int(memory.used)
        reading["memory_total"] = int(memory.total)
    temp = nvml_call(nvml, "nvmlDeviceGetTemperature", handle, _const(nvml, "GPU_TEMP"))
    reading["temperature_c"] = None if temp is None else int(temp)
    ecc = nvml_call(
        nvml,
        "nvmlDeviceGetTotalEccErrors",
        handle,
        _const(nvml, "UNCORRECTED"),
        _const(nvml, "VOLATILE"),
    )
    reading["ecc_errors"] = None if ecc is None else int(ecc)
    return reading


_DEFAULTS = {
    # NVML's values, for fakes or old bindings that lack the names.
    "GPU_TEMP": ("NVML_TEMPERATURE_GPU", 0),
    "UNCORRECTED": ("NVML_MEMORY_ERROR_TYPE_UNCORRECTED", 1),
    "VOLATILE": ("NVML_VOLATILE_ECC", 0),
    "XID": ("nvmlEventTypeXidCriticalError", 8),
}


def _const(nvml: NvmlModule, key: str) -> int:
    name, default = _DEFAULTS[key]
    return int(getattr(nvml, name, default))


class XidCounter:
    """Counts Xid errors per GPU while it is open.

    NVML reports Xids only as events, never as a counter, so this keeps an
    event set registered for the whole agent run and drains it without
    waiting on each heartbeat. ``count(i)`` is ``None`` for a GPU that does
    not deliver Xid events (or when NVML is absent), never a false zero.
    """

    def __init__(self, nvml: NvmlModule | None) -> None:
        self._nvml = nvml
        self._set: Any = None
        self._counts: dict[int, int] = {}
        self._last: dict[int, int] = {}

    def open(self) -> XidCounter:
        nvml = self._nvml
        if nvml is None or self._set is not None:
            return self
        try:
            nvml.nvmlInit()
        except nvml.NVMLError:
            self._nvml = None
            return self
        self._set = nvml_call(nvml, "nvmlEventSetCreate")
        if self._set is None:
            nvml.nvmlShutdown()
            return self
        for index in range(int(nvml_call(nvml, "nvmlDeviceGetCount") or 0)):
            handle = nvml_call(nvml, "nvmlDeviceGetHandleByIndex", index)
            if handle is None:
                continue
            try:
                nvml.nvmlDeviceRegisterEvents(handle, _const(nvml, "XID"), self._set)
            except nvml.NVMLError:  # NotSupported: this GPU's count stays None
                continue
            self._counts[index] = 0
        return self

    def poll(self) -> None:
        """Drain pending events into the counts; returns at once."""
        nvml = self._nvml
        if nvml is None or self._set is None:
            return
        for _ in range(_MAX_EVENTS_PER_POLL):
            try:
                event = nvml.nvmlEventSetWait(self._set, 0)
            except nvml.NVMLError:  # Timeout: nothing pending
                return
            if not int(event.eventType) & _const(nvml, "XID"):
                continue
            index = nvml_call(nvml, "nvmlDeviceGetIndex", event.device)
            if index is not None and int(index) in self._counts:
                self._counts[int(index)] += 1
                self._last[int(index)] = int(event.eventData)

    def count(self, index: int) -> int | None:
        return self._counts.get(index)

    def last(self, index: int) -> int | None:
        return self._last.get(index)

    def close(self) -> None:
        nvml = self._nvml
        if nvml is None or self._set is None:
            return
        nvml_call(nvml, "nvmlEventSetFree", self._set)
        self._set = None
        nvml.nvmlShutdown()

    def __enter__(self) -> XidCounter:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
