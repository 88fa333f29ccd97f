"""What this machine can offer: CPU, memory, the disk under the work
directory, NVIDIA GPUs (through NVML, when ``nvidia-ml-py`` is installed and a
driver is present) and custom devices declared in a TOML file.

``discover`` returns the capacity the agent registers: what was found (or
declared with ``--resources``) minus what ``--reserve`` keeps for the system.
Every quantity is an ``int`` in base units (cpu millicores, bytes, units), and
every device resource carries exactly as many devices as its quantity, which
is what the ledger requires of a node.
"""

from __future__ import annotations

import importlib
import os
import platform
import re
import socket
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import psutil

from apportion.core.model import Device
from apportion.core.resources import (
    MAX_QUANTITY,
    Unit,
    check_name,
    format_quantity,
    parse_quantity,
    unit_of,
)
from apportion.exceptions import InvalidInput, InvalidQuantity

NvmlModule = Any
"""``pynvml`` or an object with the same functions (the tests' fake).

Typed ``Any`` on purpose: pynvml ships no type information, and its results
are ctypes values whose fields we read by name; every value crossing this
boundary is converted with ``int``/``str`` straight away."""

GPU = "gpu"
HOST_RESOURCES = ("cpu", "memory", "storage")
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")


class _Auto(Enum):
    AUTO = "auto"


AUTO = _Auto.AUTO
"""Default for ``nvml``: import ``pynvml`` if installed, else run without GPUs."""


@dataclass(frozen=True, slots=True)
class Discovery:
    """What the agent registers. ``resources`` and ``devices`` are offered
    (capacity minus reserve); ``capacity`` and ``reserved`` show the arithmetic."""

    resources: dict[str, int]
    devices: dict[str, tuple[Device, ...]]
    specs: dict[str, Any]
    labels: dict[str, str]
    capacity: dict[str, int] = field(default_factory=dict)
    reserved: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CustomDevices:
    """The contents of a devices file: a count per resource, and the
    identified devices of those resources that list them."""

    counts: dict[str, int]
    devices: dict[str, tuple[Device, ...]]


# ---------------------------------------------------------------- discover


def discover(
    work_dir: Path,
    *,
    nvml: NvmlModule | _Auto | None = AUTO,
    devices_file: Path | None = None,
    reserve: Mapping[str, int] | None = None,
    declared: Mapping[str, int] | None = None,
) -> Discovery:
    """Discover the machine and compute the capacity to offer.

    ``declared`` (``--resources``) replaces discovery for the names it gives;
    ``reserve`` (``--reserve``) is subtracted last. Raises ``InvalidInput``
    naming the resource when a reserve exceeds capacity or a declaration
    contradicts the devices that were found.
    """
    module = load_nvml() if nvml is AUTO else nvml
    capacity, specs = host_resources(work_dir)
    gpus, gpu_specs = discover_gpus(module)
    specs.update(gpu_specs)
    devices: dict[str, tuple[Device, ...]] = {}
    if gpus:
        capacity[GPU] = len(gpus)
        devices[GPU] = gpus
    if devices_file is not None:
        _merge_custom(capacity, devices, load_devices_file(devices_file))
    if declared:
        _apply_declared(capacity, devices, declared)
        specs["declared"] = sorted(declared)
    offered, offered_devices = apply_reserve(capacity, devices, reserve or {})
    return Discovery(
        resources=offered,
        devices=offered_devices,
        specs=specs,
        labels=suggest_labels(offered, offered_devices),
        capacity={k: v for k, v in capacity.items() if v},
        reserved={k: v for k, v in (reserve or {}).items() if v},
    )


def load_nvml() -> NvmlModule | None:
    """``pynvml`` when the ``nvidia`` extra is installed, else ``None``."""
    try:
        return importlib.import_module("pynvml")
    except ImportError:
        return None


def _merge_custom(
    capacity: dict[str, int], devices: dict[str, tuple[Device, ...]], custom: CustomDevices
) -> None:
    for name, count in custom.counts.items():
        if name in capacity:
            # A devices-file "gpu" is for GPUs NVML cannot see; listing both
            # would count the same cards twice.
            raise InvalidInput(
                f"devices file: resource {name!r} is already discovered on this machine "
                f"({format_quantity(name, capacity[name])}); remove it from the file or "
                "declare it with --resources",
                field=f"device.{name}",
            )
        capacity[name] = count
        if name in custom.devices:
            devices[name] = custom.devices[name]


def _apply_declared(
    capacity: dict[str, int], devices: dict[str, tuple[Device, ...]], declared: Mapping[str, int]
) -> None:
    for name, qty in declared.items():
        _check_amount(name, qty, "resources")
        have = devices.get(name, ())
        if qty == 0:
            capacity.pop(name, None)
            devices.pop(name, None)
            continue
        if have and qty > len(have):
            raise InvalidInput(
                f"resources.{name}: declares {qty} but only {len(have)} {name} devices were "
                f"found ({', '.join(d.id for d in have)}); declare at most {len(have)}",
                field=f"resources.{name}",
            )
        if have:
            devices[name] = have[:qty]
        elif name == GPU:
            # GPUs the agent cannot see still need ids so tasks can be pinned.
            devices[name] = tuple(
                Device(id=str(i), attrs={"index": i, "declared": True}) for i in range(qty)
            )
        capacity[name] = qty


def apply_reserve(
    capacity: Mapping[str, int],
    devices: Mapping[str, tuple[Device, ...]],
    reserve: Mapping[str, int],
) -> tuple[dict[str, int], dict[str, tuple[Device, ...]]]:
    """Capacity minus reserve, with devices trimmed to match.

    Reserved device units are taken from the end of the list, so the devices
    offered keep the lowest indexes. Resources left at zero are dropped.
    """
    offered = dict(capacity)
    for name, qty in reserve.items():
        _check_amount(name, qty, "reserve")
        have = offered.get(name, 0)
        if qty > have:
            raise InvalidInput(
                f"reserve.{name}: reserves {format_quantity(name, qty)} but the node has "
                f"{format_quantity(name, have)} {name}",
                field=f"reserve.{name}",
            )
        offered[name] = have - qty
    kept = {name: qty for name, qty in offered.items() if qty > 0}
    kept_devices = {name: ds[: kept[name]] for name, ds in devices.items() if name in kept}
    return kept, kept_devices


def _check_amount(name: str, qty: int, where: str) -> None:
    check_name(name, where)
    if isinstance(qty, bool) or not isinstance(qty, int) or not 0 <= qty <= MAX_QUANTITY:
        raise InvalidQuantity(
            f"{where}.{name}: expected a whole number of base units >= 0, got {qty!r}",
            field=f"{where}.{name}",
        )


def suggest_labels(
    resources: Mapping[str, int], devices: Mapping[str, tuple[Device, ...]]
) -> dict[str, str]:
    """Labels the agent proposes; the operator's ``--labels`` win over these."""
    labels = {"type": _node_type(resources), "arch": _arch(), "os": platform.system().lower()}
    gpus = devices.get(GPU, ())
    models = {d.model for d in gpus if d.model}
    if models:
        labels["gpu.model"] = models.pop() if len(models) == 1 else "mixed"
    if any(d.attrs.get("mig") for d in gpus):
        labels["gpu.mig"] = "true"
    return labels


def _node_type(resources: Mapping[str, int]) -> str:
    if resources.get(GPU):
        return "gpu"
    for kind in ("asic", "fpga"):
        if any(name == kind or name.startswith(kind + ".") for name in resources):
            return kind
    return "cpu"


def _arch() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


# ---------------------------------------------------------------- host


def host_resources(work_dir: Path) -> tuple[dict[str, int], dict[str, Any]]:
    """cpu, memory and storage of this machine, and its specs.

    cpu counts the cores this process may run on (its affinity mask, which is
    every logical core on a plain host) and memory the RAM, both lowered to
    the agent's own cgroup limits: a container must not offer the whole host.
    """
    logical = psutil.cpu_count(logical=True) or 1
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else logical
    memory = int(psutil.virtual_memory().total)
    cpu_limit, memory_limit = own_cgroup_limits()
    disk = psutil.disk_usage(str(existing_ancestor(work_dir)))
    resources = {
        "cpu": min(usable * 1000, cpu_limit or MAX_QUANTITY),
        "memory": min(memory, memory_limit or MAX_QUANTITY),
        "storage": int(disk.total),
    }
    specs: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "os": platform.system().lower(),
        "os_release": _os_release(),
        "kernel": platform.release(),
        "arch": _arch(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_cores_physical": psutil.cpu_count(logical=False),
        "cpu_cores_logical": logical,
        "cpu_cores_usable": usable,
        "memory_total": memory,
        "work_dir": str(work_dir),
    }
    if cpu_limit is not None:
        specs["cpu_limit_cgroup"] = cpu_limit
    if memory_limit is not None:
        specs["memory_limit_cgroup"] = memory_limit
    return resources, specs


def existing_ancestor(path: Path) -> Path:
    # The work directory may not exist before the first task; its disk is
    # the one its nearest existing parent lives on.
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _os_release() -> str | None:
    try:
        return platform.freedesktop_os_release().get("PRETTY_NAME")
    except OSError:
        return None


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's marketing name, from /proc/cpuinfo where Linux has one."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        text = ""
    for key in ("model name", "Model", "cpu model", "Processor"):
        match = re.search(rf"^{key}\s*:\s*(.+?)\s*$", text, re.MULTILINE)
        if match and match.group(1):
            return match.group(1)
    return platform.processor() or platform.machine() or "unknown"


def own_cgroup_limits(
    root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_SELF_CGROUP
) -> tuple[int | None, int | None]:
    """(cpu millicores, memory bytes) this process is confined to by its
    cgroup and its ancestors, or ``None`` where unlimited or unreadable."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None, None
    cpu: list[int] = []
    memory: list[int] = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            for base in (root, root / "unified"):
                if (base / "cgroup.controllers").exists():
                    cpu += _read_each(base, path, _v2_cpu)
                    memory += _read_each(base, path, _v2_memory)
        else:
            names = controllers.split(",")
            if "cpu" in names:
                cpu += _read_each(root / controllers, path, _v1_cpu)
            if "memory" in names:
                memory += _read_each(root / controllers, path, _v1_memory)
    return (min(cpu) if cpu else None), (min(memory) if memory else None)


def _read_each(base: Path, path: str, read: Callable[[Path], int | None]) -> list[int]:
    """Limits found in the cgroup at ``path`` under ``base`` and each parent.

    Without a cgroup namespace the path is the host's and may not exist in
    this mount (the container's own cgroup is then the mount's root), so the
    walk stops at the root in every case."""
    found: list[int] = []
    current = base / path.lstrip("/")
    while True:
        try:
            value = read(current) if current.is_dir() else None
        except ValueError:  # a malformed file limits nothing we can trust
            value = None
        if value is not None:
            found.append(value)
        if current == base or base not in current.parents:
            return found
        current = current.parent


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _v2_cpu(cgroup: Path) -> int | None:
    text = _read(cgroup / "cpu.max")
    if not text or text.startswith("max"):
        return None
    quota, _, period = text.partition(" ")
    return int(quota) * 1000 // int(period or "100000")


def _v2_memory(cgroup: Path) -> int | None:
    text = _read(cgroup / "memory.max")
    return None if not text or text == "max" else int(text)


def _v1_cpu(cgroup: Path) -> int | None:
    quota, period = _read(cgroup / "cpu.cfs_quota_us"), _read(cgroup / "cpu.cfs_period_us")
    if not quota or not period or int(quota) <= 0:
        return None
    return int(quota) * 1000 // int(period)


def _v1_memory(cgroup: Path) -> int | None:
    text = _read(cgroup / "memory.limit_in_bytes")
    # v1 writes "unlimited" as the largest page-aligned 64-bit value.
    return None if not text or int(text) >= 2**62 else int(text)


# ---------------------------------------------------------------- NVML


def nvml_text(value: object) -> str:
    """NVML strings: ``bytes`` from pynvml < 11.5, ``str`` after."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


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
            devices.append(_gpu_device(nvml, index, handle, bus_ids[index], extra))
        except nvml.NVMLError as exc:
            errors.append(f"gpu {index}: {exc}")
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
    """The MIG instances configured on a GPU. Listed for the operator;
    ``gpu`` still counts physical GPUs (MIG scheduling is not built yet)."""
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
            }
        )
    return found


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


# ---------------------------------------------------------------- devices file

_DEVICE_KEYS = {"resource", "id", "serial", "model", "uuid", "memory", "attrs"}
_COUNT_KEYS = {"resource", "count"}
_PRINTABLE = re.compile(r"^[^\x00-\x1f\x7f]+$")
_ATTR_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,252}$")


def load_devices_file(path: Path) -> CustomDevices:
    """Read a devices file (TOML, ``[[device]]`` tables).

    Each table names a ``resource`` and either an ``id`` (one identified
    unit, with optional ``serial``, ``model``, ``uuid``, ``memory`` and
    ``attrs``) or a ``count`` of un-identified units. A resource is either
    all identified or one count. Errors name the file, the table and the field.
    """
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot read devices file: {exc}", field="devices") from exc
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"{path}: not valid TOML: {exc}", field="devices") from exc
    extra = sorted(set(data) - {"device"})
    if extra:
        raise InvalidInput(
            f"{path}: unknown top-level key {extra[0]!r}; list devices as [[device]] tables",
            field=extra[0],
        )
    entries = data.get("device", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise InvalidInput(f"{path}: 'device' must be [[device]] tables", field="device")
    return _collect(path, entries)


def _collect(path: Path, entries: Sequence[dict[str, Any]]) -> CustomDevices:
    counts: dict[str, int] = {}
    devices: dict[str, list[Device]] = {}
    first_at: dict[str, int] = {}
    seen: dict[tuple[str, str], int] = {}
    for i, entry in enumerate(entries):
        where = f"{path}: device[{i}]"
        name = _entry_resource(where, i, entry)
        counted = "count" in entry
        if name in first_at and (counted or name not in devices):
            raise InvalidInput(
                f"{where}: resource {name!r} is already given in device[{first_at[name]}]; "
                "a resource is either one count or a list of identified devices",
                field=f"device[{i}].resource",
            )
        first_at.setdefault(name, i)
        if counted:
            counts[name] = _entry_count(where, i, entry)
            continue
        device = _entry_device(where, i, entry)
        if (name, device.id) in seen:
            raise InvalidInput(
                f"{where}: id {device.id!r} of {name!r} repeats device[{seen[name, device.id]}]",
                field=f"device[{i}].id",
            )
        seen[name, device.id] = i
        devices.setdefault(name, []).append(device)
        counts[name] = counts.get(name, 0) + 1
    return CustomDevices(counts, {name: tuple(ds) for name, ds in devices.items()})


def _entry_resource(where: str, i: int, entry: Mapping[str, Any]) -> str:
    name = entry.get("resource")
    if not isinstance(name, str):
        raise InvalidInput(
            f"{where}: 'resource' is required (a resource name such as 'asic.s19')",
            field=f"device[{i}].resource",
        )
    check_name(name, f"{where}.resource")
    if unit_of(name) is not Unit.COUNT:
        raise InvalidInput(
            f"{where}.resource: {name!r} is measured in {unit_of(name).value}, not counted "
            "in devices; the agent discovers cpu, memory and storage itself",
            field=f"device[{i}].resource",
        )
    return name


def _entry_count(where: str, i: int, entry: Mapping[str, Any]) -> int:
    extra = sorted(set(entry) - _COUNT_KEYS)
    if extra:
        raise InvalidInput(
            f"{where}: {extra[0]!r} does not go with 'count' (identify each unit with 'id' "
            "in its own [[device]] instead)",
            field=f"device[{i}].{extra[0]}",
        )
    count = entry["count"]
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_QUANTITY:
        raise InvalidInput(
            f"{where}.count: expected a whole number >= 1, got {count!r}",
            field=f"device[{i}].count",
        )
    return count


def _entry_device(where: str, i: int, entry: Mapping[str, Any]) -> Device:
    extra = sorted(set(entry) - _DEVICE_KEYS)
    if extra:
        raise InvalidInput(
            f"{where}: unknown field {extra[0]!r}; a device takes "
            f"{', '.join(sorted(_DEVICE_KEYS))}, or resource and count",
            field=f"device[{i}].{extra[0]}",
        )
    if "id" not in entry:
        raise InvalidInput(
            f"{where}: give 'id' (one identified device) or 'count' (un-identified units)",
            field=f"device[{i}].id",
        )
    texts = {key: _text_field(where, i, key, entry.get(key)) for key in ("serial", "model", "uuid")}
    memory = entry.get("memory")
    return Device(
        id=_id_field(where, i, entry["id"]),
        model=texts["model"],
        memory=None if memory is None else parse_quantity("memory", memory, f"{where}"),
        uuid=texts["uuid"],
        serial=texts["serial"],
        attrs=_attrs_field(where, i, entry.get("attrs", {})),
    )


def _id_field(where: str, i: int, value: object) -> str:
    if not isinstance(value, str) or not _PRINTABLE.match(value) or len(value) > 128:
        raise InvalidInput(
            f"{where}.id: expected 1-128 printable characters, got {value!r}",
            field=f"device[{i}].id",
        )
    return value


def _text_field(where: str, i: int, key: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _PRINTABLE.match(value) or len(value) > 253:
        raise InvalidInput(
            f"{where}.{key}: expected 1-253 printable characters, got {value!r}",
            field=f"device[{i}].{key}",
        )
    return value


def _attrs_field(where: str, i: int, value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput(f"{where}.attrs: expected a table", field=f"device[{i}].attrs")
    for key in value:
        if not _ATTR_KEY.match(key):
            raise InvalidInput(
                f"{where}.attrs: key {key!r} must be letters, digits, '.', '_', '/' or '-'",
                field=f"device[{i}].attrs",
            )
    return dict(value)
