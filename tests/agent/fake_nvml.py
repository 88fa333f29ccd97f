"""A fake NVML with the same function names, constants, error classes and
return shapes as ``pynvml`` (nvidia-ml-py 12/13), for testing the agent
without a GPU.

Fidelity notes, checked against nvidia-ml-py 13.615's ``pynvml.py``:
- every call but ``nvmlInit`` raises ``NVMLError_Uninitialized`` before
  ``nvmlInit`` (init/shutdown are reference counted, as in pynvml);
- strings are ``str`` (pynvml >= 11.5 decodes them); ``legacy_bytes=True``
  returns ``bytes`` like older bindings;
- ``nvmlDeviceGetMemoryInfo`` returns an object with ``total``/``free``/``used``,
  ``nvmlDeviceGetUtilizationRates`` one with ``gpu``/``memory``,
  ``nvmlDeviceGetPciInfo`` one with ``busId``/``busIdLegacy``/``domain``/``bus``;
- ``nvmlDeviceGetMigMode`` returns ``[current, pending]``;
- ``NVMLError(3)`` is an ``NVMLError_NotSupported``, like pynvml's class map;
- links a GPU lacks answer ``InvalidArgument``, a GPU without NVLink
  ``NotSupported``, an empty MIG slot ``NotFound``, an empty event set
  ``Timeout``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_GPU_IS_LOST = 15


class NVMLError(Exception):
    _messages: ClassVar[dict[int, str]] = {
        NVML_ERROR_UNINITIALIZED: "Uninitialized",
        NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
        NVML_ERROR_NOT_SUPPORTED: "Not Supported",
        NVML_ERROR_NOT_FOUND: "Not Found",
        NVML_ERROR_TIMEOUT: "Timeout",
        NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
        NVML_ERROR_GPU_IS_LOST: "GPU is lost",
    }
    _by_value: ClassVar[dict[int, type[NVMLError]]] = {}

    def __new__(cls, value: int = 0) -> NVMLError:
        if cls is NVMLError:
            cls = NVMLError._by_value.get(value, cls)
        obj = Exception.__new__(cls)
        obj.value = getattr(cls, "_value", value)
        return obj

    def __init__(self, value: int = 0) -> None:
        super().__init__(self.value)

    value: int

    def __str__(self) -> str:
        return self._messages.get(self.value, f"NVML Error with code {self.value}")


def _error(name: str, value: int) -> type[NVMLError]:
    cls = type(name, (NVMLError,), {"_value": value})
    NVMLError._by_value[value] = cls
    return cls


NVMLError_Uninitialized = _error("NVMLError_Uninitialized", NVML_ERROR_UNINITIALIZED)
NVMLError_InvalidArgument = _error("NVMLError_InvalidArgument", NVML_ERROR_INVALID_ARGUMENT)
NVMLError_NotSupported = _error("NVMLError_NotSupported", NVML_ERROR_NOT_SUPPORTED)
NVMLError_NotFound = _error("NVMLError_NotFound", NVML_ERROR_NOT_FOUND)
NVMLError_Timeout = _error("NVMLError_Timeout", NVML_ERROR_TIMEOUT)
NVMLError_LibraryNotFound = _error("NVMLError_LibraryNotFound", NVML_ERROR_LIBRARY_NOT_FOUND)
NVMLError_GpuIsLost = _error("NVMLError_GpuIsLost", NVML_ERROR_GPU_IS_LOST)

SWITCH = "switch"
"""An NVLink whose far end is an NVSwitch (``FakeGpu.nvlinks`` entry)."""


@dataclass
class FakeMig:
    """One MIG instance. NVML names its handle "<GPU name> MIG <profile>";
    ``named=False`` models a driver whose name lacks the profile, which is
    then read from ``nvmlDeviceGetAttributes`` (slices, memory in MiB)."""

    uuid: str
    memory: int
    profile: str = "1g.5gb"
    slices: int = 1
    named: bool = True


@dataclass
class _Attributes:
    """``c_nvmlDeviceAttributes``' fields the agent reads."""

    multiprocessorCount: int
    gpuInstanceSliceCount: int
    computeInstanceSliceCount: int
    memorySizeMB: int


@dataclass
class FakeGpu:
    """One simulated GPU. ``None`` in a sensor field means NotSupported."""

    name: str
    uuid: str
    memory_total: int
    bus_id: str
    memory_used: int = 0
    serial: str | None = None
    numa_node: int | None = None
    minor: int | None = None
    temperature: int | None = 40
    utilization: int | None = 0
    ecc_uncorrected: int | None = 0
    mig_mode: int | None = 0  # None: GPU is not MIG-capable
    mig_slots: int = 0
    migs: dict[int, FakeMig] = field(default_factory=dict)
    # One entry per NVLink: a peer bus id, SWITCH, or "" for an inactive link;
    # None: the GPU has no NVLink at all.
    nvlinks: list[str] | None = None
    xid_events: bool = True
    lost: bool = False


@dataclass
class _Handle:
    index: int
    mig_slot: int | None = None


@dataclass
class _Memory:
    total: int
    free: int
    used: int


@dataclass
class _Utilization:
    gpu: int
    memory: int


@dataclass
class _PciInfo:
    busId: Any
    busIdLegacy: Any
    domain: int
    bus: int
    device: int


@dataclass
class _EventData:
    device: _Handle
    eventType: int
    eventData: int
    gpuInstanceId: int = 0xFFFFFFFF
    computeInstanceId: int = 0xFFFFFFFF


@dataclass
class _EventSet:
    pending: list[_EventData] = field(default_factory=list)
    devices: set[int] = field(default_factory=set)
    freed: bool = False


class FakeNvml:
    """Module-like fake: pass an instance wherever the agent takes ``pynvml``."""

    NVMLError = NVMLError
    NVMLError_Uninitialized = NVMLError_Uninitialized
    NVMLError_InvalidArgument = NVMLError_InvalidArgument
    NVMLError_NotSupported = NVMLError_NotSupported
    NVMLError_NotFound = NVMLError_NotFound
    NVMLError_Timeout = NVMLError_Timeout
    NVMLError_LibraryNotFound = NVMLError_LibraryNotFound
    NVMLError_GpuIsLost = NVMLError_GpuIsLost

    NVML_FEATURE_DISABLED = 0
    NVML_FEATURE_ENABLED = 1
    NVML_TEMPERATURE_GPU = 0
    NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
    NVML_VOLATILE_ECC = 0
    NVML_AGGREGATE_ECC = 1
    NVML_DEVICE_MIG_DISABLE = 0
    NVML_DEVICE_MIG_ENABLE = 1
    NVML_NVLINK_MAX_LINKS = 36
    NVML_NVLINK_DEVICE_TYPE_GPU = 0
    NVML_NVLINK_DEVICE_TYPE_IBMNPU = 1
    NVML_NVLINK_DEVICE_TYPE_SWITCH = 2
    nvmlEventTypeXidCriticalError = 0x8

    def __init__(
        self,
        gpus: list[FakeGpu],
        *,
        driver: str = "550.54.15",
        cuda: int = 12040,
        library_missing: bool = False,
        legacy_bytes: bool = False,
    ) -> None:
        self.gpus = gpus
        self.driver = driver
        self.cuda = cuda
        self.library_missing = library_missing
        self.legacy_bytes = legacy_bytes
        self.refcount = 0
        self.calls: list[str] = []
        self._event_sets: list[_EventSet] = []

    # -- helpers for tests ---------------------------------------------------

    def inject_xid(self, index: int, xid: int) -> None:
        """Deliver an Xid critical error event for GPU ``index``."""
        for events in self._event_sets:
            if index in events.devices and not events.freed:
                events.pending.append(
                    _EventData(_Handle(index), self.nvmlEventTypeXidCriticalError, xid)
                )

    # -- internals -----------------------------------------------------------

    def _enter(self, name: str) -> None:
        self.calls.append(name)
        if self.refcount <= 0:
            raise NVMLError_Uninitialized()

    def _text(self, value: str) -> Any:
        return value.encode() if self.legacy_bytes else value

    def _gpu(self, handle: _Handle) -> FakeGpu:
        if not isinstance(handle, _Handle) or not 0 <= handle.index < len(self.gpus):
            raise NVMLError_InvalidArgument()
        gpu = self.gpus[handle.index]
        if gpu.lost:
            raise NVMLError_GpuIsLost()
        return gpu

    def _pci(self, bus_id: str) -> _PciInfo:
        domain, bus, rest = bus_id.split(":")
        legacy = f"{int(domain, 16):04x}:{bus}:{rest}".upper()
        return _PciInfo(self._text(bus_id), self._text(legacy), int(domain, 16), int(bus, 16), 0)

    @staticmethod
    def _supported(value: Any) -> Any:
        if value is None:
            raise NVMLError_NotSupported()
        return value

    # -- system --------------------------------------------------------------

    def nvmlInit(self) -> None:
        self.calls.append("nvmlInit")
        if self.library_missing:
            raise NVMLError_LibraryNotFound()
        self.refcount += 1

    def nvmlShutdown(self) -> None:
        self._enter("nvmlShutdown")
        self.refcount -= 1

    def nvmlSystemGetDriverVersion(self) -> Any:
        self._enter("nvmlSystemGetDriverVersion")
        return self._text(self.driver)

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        self._enter("nvmlSystemGetCudaDriverVersion")
        return self.cuda

    # -- devices -------------------------------------------------------------

    def nvmlDeviceGetCount(self) -> int:
        self._enter("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        self._enter("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self.gpus):
            raise NVMLError_InvalidArgument()
        if self.gpus[index].lost:
            raise NVMLError_GpuIsLost()
        return _Handle(index)

    def nvmlDeviceGetIndex(self, handle: _Handle) -> int:
        self._enter("nvmlDeviceGetIndex")
        self._gpu(handle)
        return handle.index

    def nvmlDeviceGetName(self, handle: _Handle) -> Any:
        self._enter("nvmlDeviceGetName")
        gpu = self._gpu(handle)
        if handle.mig_slot is not None:
            mig = gpu.migs[handle.mig_slot]
            return self._text(f"{gpu.name} MIG {mig.profile}" if mig.named else gpu.name)
        return self._text(gpu.name)

    def nvmlDeviceGetAttributes(self, device: _Handle) -> _Attributes:
        """Answered for MIG handles only: the agent asks it of nothing else."""
        self._enter("nvmlDeviceGetAttributes")
        gpu = self._gpu(device)
        if device.mig_slot is None:
            raise NVMLError_NotSupported()
        mig = gpu.migs[device.mig_slot]
        return _Attributes(14 * mig.slices, mig.slices, mig.slices, mig.memory // 2**20)

    def nvmlDeviceGetUUID(self, handle: _Handle) -> Any:
        self._enter("nvmlDeviceGetUUID")
        gpu = self._gpu(handle)
        if handle.mig_slot is not None:
            return self._text(gpu.migs[handle.mig_slot].uuid)
        return self._text(gpu.uuid)

    def nvmlDeviceGetSerial(self, handle: _Handle) -> Any:
        self._enter("nvmlDeviceGetSerial")
        return self._text(self._supported(self._gpu(handle).serial))

    def nvmlDeviceGetMemoryInfo(self, handle: _Handle, version: int | None = None) -> _Memory:
        self._enter("nvmlDeviceGetMemoryInfo")
        gpu = self._gpu(handle)
        if handle.mig_slot is not None:
            total = gpu.migs[handle.mig_slot].memory
            return _Memory(total, total, 0)
        return _Memory(gpu.memory_total, gpu.memory_total - gpu.memory_used, gpu.memory_used)

    def nvmlDeviceGetTemperature(self, handle: _Handle, sensor: int) -> int:
        self._enter("nvmlDeviceGetTemperature")
        if sensor != self.NVML_TEMPERATURE_GPU:
            raise NVMLError_InvalidArgument()
        return int(self._supported(self._gpu(handle).temperature))

    def nvmlDeviceGetUtilizationRates(self, handle: _Handle) -> _Utilization:
        self._enter("nvmlDeviceGetUtilizationRates")
        gpu = self._gpu(handle)
        return _Utilization(self._supported(gpu.utilization), 0)

    def nvmlDeviceGetTotalEccErrors(self, handle: _Handle, errorType: int, counterType: int) -> int:
        self._enter("nvmlDeviceGetTotalEccErrors")
        if errorType not in (0, 1) or counterType not in (0, 1):
            raise NVMLError_InvalidArgument()
        count = self._supported(self._gpu(handle).ecc_uncorrected)
        return int(count) if errorType == self.NVML_MEMORY_ERROR_TYPE_UNCORRECTED else 0

    def nvmlDeviceGetMinorNumber(self, handle: _Handle) -> int:
        self._enter("nvmlDeviceGetMinorNumber")
        return int(self._supported(self._gpu(handle).minor))

    def nvmlDeviceGetNumaNodeId(self, handle: _Handle) -> int:
        self._enter("nvmlDeviceGetNumaNodeId")
        return int(self._supported(self._gpu(handle).numa_node))

    def nvmlDeviceGetPciInfo(self, handle: _Handle) -> _PciInfo:
        self._enter("nvmlDeviceGetPciInfo")
        return self._pci(self._gpu(handle).bus_id)

    # -- MIG -----------------------------------------------------------------

    def nvmlDeviceGetMigMode(self, device: _Handle) -> list[int]:
        self._enter("nvmlDeviceGetMigMode")
        mode = self._supported(self._gpu(device).mig_mode)
        return [mode, mode]

    def nvmlDeviceGetMaxMigDeviceCount(self, device: _Handle) -> int:
        self._enter("nvmlDeviceGetMaxMigDeviceCount")
        gpu = self._gpu(device)
        self._supported(gpu.mig_mode)
        return gpu.mig_slots

    def nvmlDeviceGetMigDeviceHandleByIndex(self, device: _Handle, index: int) -> _Handle:
        self._enter("nvmlDeviceGetMigDeviceHandleByIndex")
        gpu = self._gpu(device)
        if gpu.mig_mode != self.NVML_DEVICE_MIG_ENABLE or not 0 <= index < gpu.mig_slots:
            raise NVMLError_InvalidArgument()
        if index not in gpu.migs:
            raise NVMLError_NotFound()
        return _Handle(device.index, index)

    # -- NVLink --------------------------------------------------------------

    def _link(self, handle: _Handle, link: int) -> str:
        links = self._supported(self._gpu(handle).nvlinks)
        if not 0 <= link < len(links):
            raise NVMLError_InvalidArgument()
        return str(links[link])

    def nvmlDeviceGetNvLinkState(self, device: _Handle, link: int) -> int:
        self._enter("nvmlDeviceGetNvLinkState")
        active = self._link(device, link) != ""
        return self.NVML_FEATURE_ENABLED if active else self.NVML_FEATURE_DISABLED

    def nvmlDeviceGetNvLinkRemoteDeviceType(self, handle: _Handle, link: int) -> int:
        self._enter("nvmlDeviceGetNvLinkRemoteDeviceType")
        far = self._link(handle, link)
        if far == SWITCH:
            return self.NVML_NVLINK_DEVICE_TYPE_SWITCH
        return self.NVML_NVLINK_DEVICE_TYPE_GPU

    def nvmlDeviceGetNvLinkRemotePciInfo(self, device: _Handle, link: int) -> _PciInfo:
        self._enter("nvmlDeviceGetNvLinkRemotePciInfo")
        far = self._link(device, link)
        if not far:
            raise NVMLError_NotSupported()
        return self._pci("00000000:FF:00.0" if far == SWITCH else far)

    # -- events --------------------------------------------------------------

    def nvmlEventSetCreate(self) -> _EventSet:
        self._enter("nvmlEventSetCreate")
        events = _EventSet()
        self._event_sets.append(events)
        return events

    def nvmlDeviceRegisterEvents(
        self, handle: _Handle, eventTypes: int, eventSet: _EventSet
    ) -> None:
        self._enter("nvmlDeviceRegisterEvents")
        if not self._gpu(handle).xid_events:
            raise NVMLError_NotSupported()
        eventSet.devices.add(handle.index)

    def nvmlEventSetWait(self, eventSet: _EventSet, timeoutms: int) -> _EventData:
        self._enter("nvmlEventSetWait")
        if not eventSet.pending:
            raise NVMLError_Timeout()
        return eventSet.pending.pop(0)

    def nvmlEventSetFree(self, eventSet: _EventSet) -> None:
        self._enter("nvmlEventSetFree")
        eventSet.freed = True


# ---------------------------------------------------------------- scenarios

H100_NAME = "NVIDIA H100 80GB HBM3"
H100_MEMORY = 85_520_809_984  # 81559 MiB, what NVML reports for an H100 SXM5 80GB
H100_BUS = ("00000000:18:00.0", "00000000:2A:00.0")
H100_UUID = (
    "GPU-0d9f1c5e-7a1b-4c2d-9e3f-000000000000",
    "GPU-0d9f1c5e-7a1b-4c2d-9e3f-000000000001",
)
A100_NAME = "NVIDIA A100-SXM4-40GB"
A100_MEMORY = 42_949_672_960  # 40960 MiB
A100_UUID = "GPU-a100a100-0000-4000-8000-00000000a100"
MIG_UUIDS = (
    "MIG-11111111-2222-5333-8444-555555555550",
    "MIG-11111111-2222-5333-8444-555555555552",
)
MIG_MEMORY = 5_100_273_664  # 4864 MiB: a 1g.5gb instance
MIG_MEMORY_3G = 20_937_965_568  # 19968 MiB: a 3g.20gb instance


def h100_pair(**kwargs: Any) -> FakeNvml:
    """Two H100s bridged by four active NVLinks each (of 18), on two NUMA nodes."""

    def links(peer: str) -> list[str]:
        return [peer] * 4 + [""] * 14

    gpus = [
        FakeGpu(
            H100_NAME,
            H100_UUID[i],
            H100_MEMORY,
            H100_BUS[i],
            serial=f"165012300000{i}",
            numa_node=i,
            temperature=31 + i,
            utilization=97 - i * 10,
            memory_used=1_048_576 * (100 + i),
            nvlinks=links(H100_BUS[1 - i]),
        )
        for i in range(2)
    ]
    return FakeNvml(gpus, **kwargs)


def a100_mig(*, named: bool = True, **kwargs: Any) -> FakeNvml:
    """One A100 in MIG mode with a 1g.5gb instance in slot 0 and a 3g.20gb one
    in slot 2 (of 7); like a real MIG-enabled GPU, it does not report
    utilization (NotSupported). ``named=False``: instance names without the
    profile (read from the attributes instead)."""
    gpu = FakeGpu(
        A100_NAME,
        A100_UUID,
        A100_MEMORY,
        "00000000:07:00.0",
        serial="1324020000001",
        numa_node=None,
        utilization=None,
        mig_mode=1,
        mig_slots=7,
        migs={
            0: FakeMig(MIG_UUIDS[0], MIG_MEMORY, named=named),
            2: FakeMig(MIG_UUIDS[1], MIG_MEMORY_3G, "3g.20gb", 3, named=named),
        },
        nvlinks=None,
        xid_events=False,
    )
    return FakeNvml([gpu], **kwargs)


def consumer_card(**kwargs: Any) -> FakeNvml:
    """A GeForce card: no ECC, no MIG, no NVLink, no NUMA affinity, no serial."""
    gpu = FakeGpu(
        "NVIDIA GeForce RTX 4090",
        "GPU-40904090-0000-4000-8000-000000004090",
        25_757_220_864,
        "00000000:01:00.0",
        ecc_uncorrected=None,
        mig_mode=None,
        nvlinks=None,
    )
    return FakeNvml([gpu], **kwargs)


def nvswitch_box(count: int = 4) -> FakeNvml:
    """``count`` GPUs whose 18 NVLinks all go to NVSwitches (an HGX board)."""
    gpus = [
        FakeGpu(
            H100_NAME,
            f"GPU-5e5e5e5e-0000-4000-8000-00000000000{i}",
            H100_MEMORY,
            f"00000000:{0x18 + i * 0x10:02X}:00.0",
            nvlinks=[SWITCH] * 18,
        )
        for i in range(count)
    ]
    return FakeNvml(gpus)
