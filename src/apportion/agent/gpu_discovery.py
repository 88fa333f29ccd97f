"""NVIDIA GPUs as devices, read through NVML (``nvidia-ml-py``, the
``nvidia`` extra): index, model, memory, UUID, PCI bus, NUMA node, MIG
instances and NVLink peers, and the driver's versions.

A GPU in MIG mode is not offered itself (CUDA cannot use it whole): each of
its MIG instances is a ``gpu`` device of its own, id ``<index>-mig<slot>``,
with the instance's UUID (what ``CUDA_VISIBLE_DEVICES`` takes for it), its
memory, and its profile in ``attrs["mig"]`` (``1g.10gb``), so a job selects
instances with ``-c gpu.mig=1g.10gb``.

NVML is optional: without the package or a driver, ``discover_gpus`` finds
no GPUs and says why in the specs. ``discovery.discover`` adds what is found
here to the host's capacity; ``usage`` reads live GPU readings through the
same ``nvml_call``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from apportion.core.model import Device
from apportion.nvml import NvmlModule, nvml_text


def nvml_call(nvml: NvmlModule, function: str, *args: object) -> Any:
    """``nvml.<function>(*args)``, or ``None`` when this GPU, driver or
    pynvml version does not provide it. Only NVML errors are absorbed."""
    fn = getattr(nvml, function, None)
    if fn is None:
        return None
    try:
        return fn(*args)
    except nvml.NVMLError:
        return None


def discover_gpus(nvml: NvmlModule | None) -> tuple[tuple[Device, ...], dict[str, Any]]:
    """NVIDIA GPUs as devices with ids "0".."n-1" (the NVML index, which is
    what ``CUDA_VISIBLE_DEVICES`` takes), and the driver's specs.

    A GPU that NVML cannot describe (fallen off the bus, lost) is left out and
    named in ``specs["gpu_errors"]``; a changed device set then shows up as a
    changed capacity on the next scan.
    """
    if nvml is None:
        return (), {"nvml": "not installed"}
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        return (), {"nvml": f"unavailable: {exc}"}
    try:
        return _scan_gpus(nvml)
    finally:
        # nvmlInit/nvmlShutdown are reference counted, so an agent that holds
        # its own session open keeps NVML loaded across scans.
        nvml.nvmlShutdown()


def _scan_gpus(nvml: NvmlModule) -> tuple[tuple[Device, ...], dict[str, Any]]:
    specs: dict[str, Any] = {"nvml": "ok"}
    driver = nvml_call(nvml, "nvmlSystemGetDriverVersion")
    if driver is not None:
        specs["nvidia_driver"] = nvml_text(driver)
    cuda = nvml_call(nvml, "nvmlSystemGetCudaDriverVersion")
    if cuda is not None:
        specs["cuda_driver"] = f"{int(cuda) // 1000}.{int(cuda) % 1000 // 10}"
    try:
        count = int(nvml.nvmlDeviceGetCount())
    except nvml.NVMLError as exc:
        specs["nvml"] = f"cannot count GPUs: {exc}"
        return (), specs
    handles: dict[int, Any] = {}
    errors: list[str] = []
    for index in range(count):
        try:
            handles[index] = nvml.nvmlDeviceGetHandleByIndex(index)
        except nvml.NVMLError as exc:
            errors.append(f"gpu {index}: {exc}")
    devices = _describe_gpus(nvml, handles, errors)
    if errors:
        specs["gpu_errors"] = errors
    return devices, specs


def _describe_gpus(
    nvml: NvmlModule, handles: Mapping[int, Any], errors: list[str]
) -> tuple[Device, ...]:
    bus_ids = {i: _bus_id(nvml, h) for i, h in handles.items()}
    links = {i: _nvlinks(nvml, h, bus_ids) for i, h in handles.items()}
    peers = _nvlink_peers(links)
    devices: list[Device] = []
    for index, handle in handles.items():
        extra: dict[str, Any] = {}
        if links[index].active:
            extra["nvlink_links"] = links[index].active
            extra["nvlink_peers"] = peers[index]
            if links[index].switch:
                extra["nvswitch"] = True
        try:
            gpu = _gpu_device(nvml, index, handle, bus_ids[index], extra)
        except nvml.NVMLError as exc:
            errors.append(f"gpu {index}: {exc}")
            continue
        if not gpu.attrs["mig"]:
            devices.append(gpu)
            continue
        instances = [_mig_device(gpu, info) for info in gpu.attrs.get("mig_devices", [])]
        if not instances:
            errors.append(f"gpu {index}: MIG mode is on but no MIG instance is configured")
        devices.extend(instances)
    return tuple(devices)


def _gpu_device(
    nvml: NvmlModule, index: int, handle: Any, bus_id: str | None, extra: dict[str, Any]
) -> Device:
    name = nvml_text(nvml.nvmlDeviceGetName(handle))
    uuid = nvml_text(nvml.nvmlDeviceGetUUID(handle))
    memory = int(nvml.nvmlDeviceGetMemoryInfo(handle).total)
    mig = _mig_enabled(nvml, handle)
    attrs: dict[str, Any] = {"index": index, "name": name, "mig": mig, **extra}
    if bus_id is not None:
        attrs["pci_bus_id"] = bus_id
    minor = nvml_call(nvml, "nvmlDeviceGetMinorNumber", handle)
    if minor is not None:
        attrs["minor"] = int(minor)  # its node is /dev/nvidia<minor> (the GPU fence)
    numa = nvml_call(nvml, "nvmlDeviceGetNumaNodeId", handle)
    if numa is not None and int(numa) >= 0:
        attrs["numa_node"] = int(numa)
    if mig:
        attrs["mig_devices"] = _mig_devices(nvml, handle)
    serial = nvml_call(nvml, "nvmlDeviceGetSerial", handle)
    return Device(
        id=str(index),
        model=short_gpu_model(name),
        memory=memory,
        uuid=uuid,
        serial=nvml_text(serial) if serial else None,
        attrs=attrs,
    )


_VENDOR_WORDS = {"NVIDIA", "TESLA", "GEFORCE", "QUADRO"}
_SERIES_WORDS = {"RTX", "GTX", "TITAN"}


def short_gpu_model(name: str) -> str:
    """The model people select on: "NVIDIA H100 80GB HBM3" -> "H100",
    "NVIDIA A100-SXM4-80GB" -> "A100", "NVIDIA GeForce RTX 4090" -> "RTX-4090".
    The full name stays in the device's ``attrs["name"]``."""
    words = [w for w in name.split() if w.upper() not in _VENDOR_WORDS]
    if not words:
        return name.strip() or "unknown"
    first = words[0].split("-")[0]
    if first.upper() in _SERIES_WORDS and len(words) > 1:
        return f"{first}-{words[1].split('-')[0]}"
    return first


def _mig_enabled(nvml: NvmlModule, handle: Any) -> bool:
    modes = nvml_call(nvml, "nvmlDeviceGetMigMode", handle)
    enable = getattr(nvml, "NVML_DEVICE_MIG_ENABLE", 1)
    return modes is not None and int(modes[0]) == enable


def _mig_devices(nvml: NvmlModule, handle: Any) -> list[dict[str, Any]]:
    """The MIG instances configured on a GPU: slot, UUID, memory, profile."""
    slots = int(nvml_call(nvml, "nvmlDeviceGetMaxMigDeviceCount", handle) or 0)
    found: list[dict[str, Any]] = []
    for slot in range(slots):
        mig = nvml_call(nvml, "nvmlDeviceGetMigDeviceHandleByIndex", handle, slot)
        if mig is None:  # empty slot: NVML answers NotFound
            continue
        uuid = nvml_call(nvml, "nvmlDeviceGetUUID", mig)
        info = nvml_call(nvml, "nvmlDeviceGetMemoryInfo", mig)
        found.append(
            {
                "slot": slot,
                "uuid": nvml_text(uuid) if uuid is not None else None,
                "memory": int(info.total) if info is not None else None,
                "profile": mig_profile(nvml, mig),
            }
        )
    return found


_PROFILE_RE = re.compile(r"\bMIG\s+(\S+)\s*$")


def mig_profile(nvml: NvmlModule, mig: Any) -> str | None:
    """A MIG instance's profile (``1g.10gb``): the tail of the name NVML gives
    its handle (``NVIDIA A100-SXM4-40GB MIG 1g.5gb``), else built from its
    slice count and memory as ``nvidia-smi`` names profiles."""
    name = nvml_call(nvml, "nvmlDeviceGetName", mig)
    match = _PROFILE_RE.search(nvml_text(name)) if name is not None else None
    if match:
        return match.group(1).lower()
    attrs = nvml_call(nvml, "nvmlDeviceGetAttributes", mig)
    slices = getattr(attrs, "gpuInstanceSliceCount", None)
    memory_mb = getattr(attrs, "memorySizeMB", None)
    if slices and memory_mb:
        # NVIDIA rounds up: 4864 MiB is "1g.5gb", 19968 MiB "3g.20gb".
        return f"{int(slices)}g.{-(-int(memory_mb) // 1024)}gb"
    return None


def _mig_device(gpu: Device, info: Mapping[str, Any]) -> Device:
    """One MIG instance of ``gpu`` as a device of its own."""
    keep = ("index", "name", "pci_bus_id", "minor", "numa_node")
    attrs = {k: gpu.attrs[k] for k in keep if k in gpu.attrs}
    attrs.update(mig=info.get("profile") or "unknown", mig_slot=info["slot"], gpu_uuid=gpu.uuid)
    return Device(
        id=f"{gpu.id}-mig{info['slot']}",
        model=gpu.model,
        memory=info.get("memory"),
        uuid=info.get("uuid"),
        attrs=attrs,
    )


def _bus_id(nvml: NvmlModule, handle: Any) -> str | None:
    info = nvml_call(nvml, "nvmlDeviceGetPciInfo", handle)
    return normalize_bus_id(nvml_text(info.busId)) if info is not None else None


def normalize_bus_id(text: str) -> str | None:
    """NVML writes bus ids with an 8- or 4-digit domain ("00000000:3B:00.0",
    "0000:3b:00.0" in older fields); compare them in one form."""
    domain, sep, rest = text.strip().rpartition(":")
    domain, _, bus = domain.rpartition(":")
    if not sep or not bus:
        return None
    try:
        return f"{int(domain or '0', 16):08X}:{bus.upper()}:{rest.upper()}"
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class _Links:
    active: int
    gpus: frozenset[int]
    switch: bool


def _nvlinks(nvml: NvmlModule, handle: Any, bus_ids: Mapping[int, str | None]) -> _Links:
    by_bus = {bus: index for index, bus in bus_ids.items() if bus is not None}
    enabled = getattr(nvml, "NVML_FEATURE_ENABLED", 1)
    switch_type = getattr(nvml, "NVML_NVLINK_DEVICE_TYPE_SWITCH", 2)
    active, gpus, switch = 0, set(), False
    for link in range(int(getattr(nvml, "NVML_NVLINK_MAX_LINKS", 18))):
        # Links a GPU does not have answer NotSupported or InvalidArgument.
        state = nvml_call(nvml, "nvmlDeviceGetNvLinkState", handle, link)
        if state is None or int(state) != enabled:
            continue
        active += 1
        if nvml_call(nvml, "nvmlDeviceGetNvLinkRemoteDeviceType", handle, link) == switch_type:
            switch = True
            continue
        remote = nvml_call(nvml, "nvmlDeviceGetNvLinkRemotePciInfo", handle, link)
        bus = normalize_bus_id(nvml_text(remote.busId)) if remote is not None else None
        if bus in by_bus:
            gpus.add(by_bus[bus])
    return _Links(active, frozenset(gpus), switch)


def _nvlink_peers(links: Mapping[int, _Links]) -> dict[int, list[int]]:
    """GPU indexes each GPU reaches over NVLink: its direct links, and on an
    NVSwitch system every other GPU that is also wired to a switch."""
    switched = {i for i, link in links.items() if link.switch}
    peers: dict[int, list[int]] = {}
    for index, link in links.items():
        reach = set(link.gpus) | (switched if link.switch else set())
        peers[index] = sorted(reach - {index})
    return peers
