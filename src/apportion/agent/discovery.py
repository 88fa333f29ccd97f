"""What this machine can offer: CPU, memory, the disk under the work
directory, NVIDIA GPUs (``gpu_discovery``, through NVML, when ``nvidia-ml-py``
is installed and a driver is present) and custom devices declared in a TOML
file (``devices_file``).

``discover`` returns the capacity the agent registers: what was found (or
declared with ``--resources``) minus what ``--reserve`` keeps for the system.
Every quantity is an ``int`` in base units (cpu millicores, bytes, units), and
every device resource carries exactly as many devices as its quantity, which
is what the ledger requires of a node. The host's own resources (cpu, memory,
storage, and the cgroup limits that lower them) are found here.
"""

from __future__ import annotations

import os
import platform
import re
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from apportion.agent.devices_file import CustomDevices, load_devices_file
from apportion.agent.gpu_discovery import (
    discover_gpus,
    normalize_bus_id,
    nvml_call,
    short_gpu_model,
)
from apportion.core.gpu_shares import SHARES, split_gpu
from apportion.core.model import Device
from apportion.core.resources import MAX_QUANTITY, check_name, format_quantity
from apportion.exceptions import InvalidInput, InvalidQuantity
from apportion.nvml import AUTO, NvmlChoice, NvmlModule, load_nvml, nvml_text

GPU = "gpu"
HOST_RESOURCES = ("cpu", "memory", "storage")
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")


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


# ---------------------------------------------------------------- discover


def discover(
    work_dir: Path,
    *,
    nvml: NvmlChoice = AUTO,
    devices_file: Path | None = None,
    reserve: Mapping[str, int] | None = None,
    declared: Mapping[str, int] | None = None,
    gpu_shares: int | None = None,
    shared_gpus: Sequence[str] | None = None,
) -> Discovery:
    """Discover the machine and compute the capacity to offer.

    ``declared`` (``--resources``) replaces discovery for the names it gives;
    ``reserve`` (``--reserve``) is subtracted last. Raises ``InvalidInput``
    naming the resource when a reserve exceeds capacity or a declaration
    contradicts the devices that were found. ``gpu_shares`` then splits the
    GPUs offered (``shared_gpus`` of them, or all) into that many shares each.
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
    if gpu_shares is not None:
        apply_shares(offered, offered_devices, gpu_shares, shared_gpus)
    return Discovery(
        resources=offered,
        devices=offered_devices,
        specs=specs,
        labels=suggest_labels(offered, offered_devices),
        capacity={k: v for k, v in capacity.items() if v},
        reserved={k: v for k, v in (reserve or {}).items() if v},
    )



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


def apply_shares(
    offered: dict[str, int],
    devices: dict[str, tuple[Device, ...]],
    split: int,
    only: Sequence[str] | None = None,
) -> None:
    """Offer GPUs as ``split`` shares each (``gpu.shares`` slots, see
    ``core.gpu_shares``), in place: the GPUs named in ``only`` (every GPU when
    None); the others stay whole. A GPU is offered one way, never both."""
    gpus = devices.get(GPU, ())
    if not gpus:
        raise InvalidInput("gpu_shares: this machine offers no GPU to split (none found, none "
                           "declared with --resources gpu=N)", field="gpu_shares")
    ids = [d.id for d in gpus]
    unknown = sorted(set(only or ()) - set(ids))
    if unknown:
        raise InvalidInput(f"shared_gpus: no GPU {', '.join(unknown)} here; the GPUs are "
                           f"{', '.join(ids)}", field="shared_gpus")
    chosen = [d for d in gpus if only is None or d.id in only]
    whole = tuple(d for d in gpus if d not in chosen)
    slots = tuple(s for d in chosen for s in split_gpu(d, split))
    devices[SHARES] = slots
    offered[SHARES] = len(slots)
    if whole:
        devices[GPU], offered[GPU] = whole, len(whole)
    else:
        devices.pop(GPU, None)
        offered.pop(GPU, None)


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
    gpus = (*devices.get(GPU, ()), *devices.get(SHARES, ()))
    models = {d.model for d in gpus if d.model}
    if models:
        labels["gpu.model"] = models.pop() if len(models) == 1 else "mixed"
    if any(d.attrs.get("mig") for d in gpus):
        labels["gpu.mig"] = "true"
    splits = {d.attrs.get("shares") for d in devices.get(SHARES, ())}
    if len(splits) == 1:
        labels[SHARES] = str(splits.pop())
    return labels


def _node_type(resources: Mapping[str, int]) -> str:
    if resources.get(GPU) or resources.get(SHARES):
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


# With the names that moved to gpu_discovery and devices_file, which the agent's
# other modules and the tests still import from here.
__all__ = [
    "AUTO",
    "CGROUP_ROOT",
    "GPU",
    "HOST_RESOURCES",
    "PROC_SELF_CGROUP",
    "CustomDevices",
    "Discovery",
    "NvmlModule",
    "apply_reserve",
    "cpu_model",
    "discover",
    "discover_gpus",
    "existing_ancestor",
    "host_resources",
    "load_devices_file",
    "load_nvml",
    "normalize_bus_id",
    "nvml_call",
    "nvml_text",
    "own_cgroup_limits",
    "short_gpu_model",
    "suggest_labels",
]
