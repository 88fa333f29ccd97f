"""The devices file (``--devices``, TOML): custom devices that no
discovery finds, such as ASICs, FPGAs or licences, each resource either a
count of units or a list of identified devices.

``load_devices_file`` checks the whole file and names the file, the table and
the field in every error; ``discovery.discover`` adds what it declares to the
node's capacity.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apportion.core.model import Device
from apportion.core.resources import MAX_QUANTITY, Unit, check_name, parse_quantity, unit_of
from apportion.exceptions import InvalidInput


@dataclass(frozen=True, slots=True)
class CustomDevices:
    """The contents of a devices file: a count per resource, and the
    identified devices of those resources that list them."""

    counts: dict[str, int]
    devices: dict[str, tuple[Device, ...]]


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
