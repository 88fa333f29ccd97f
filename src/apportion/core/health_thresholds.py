"""Health thresholds: the bands each rule compares readings with, their
defaults, and their reading from the ``[health]`` table of the server's
config file (every key optional; an unknown or malformed one is refused
with its path)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any

from apportion.core.errors import InvalidInput


class Severity(StrEnum):
    WARNING = "warning"
    CRITICAL = "critical"


class HealthRule(StrEnum):
    TEMPERATURE = "temperature"
    MEMORY = "memory"
    DISK = "disk"
    ECC_ERRORS = "ecc_errors"
    XID_ERRORS = "xid_errors"
    DEVICE_ERRORS = "device_errors"
    TASK_FAILURES = "task_failures"
    HEARTBEAT = "heartbeat"


# --------------------------------------------------------------------------- thresholds


@dataclass(frozen=True, slots=True)
class Band:
    """Warning and critical levels of one gauge, and how far below a level a
    reading must fall before that level clears."""

    warning: float
    critical: float
    clear_margin: float = 5.0

    def check(self, path: str, *, upper: float | None = None) -> None:
        if not 0 < self.warning <= self.critical:
            raise _invalid(
                f"{path}: warning ({self.warning:g}) must be above 0 and at most "
                f"critical ({self.critical:g})",
                path,
            )
        if upper is not None and self.critical > upper:
            raise _invalid(
                f"{path}.critical: {self.critical:g} is above {upper:g}", f"{path}.critical"
            )
        if not 0 <= self.clear_margin < self.warning:
            raise _invalid(
                f"{path}.clear_margin: {self.clear_margin:g} must be at least 0 and below "
                f"warning ({self.warning:g})",
                f"{path}.clear_margin",
            )


@dataclass(frozen=True, slots=True)
class HealthThresholds:
    """Every health threshold; the defaults are the documented ones."""

    temperature: Band = Band(80.0, 90.0)  # °C, any GPU or ASIC sensor
    memory: Band = Band(80.0, 90.0)  # percent of host memory in use
    disk: Band = Band(85.0, 95.0)  # percent of the work directory's disk in use
    heartbeat_degraded_missed: float = 2.0  # intervals without a heartbeat
    heartbeat_unhealthy_missed: float = 3.0
    failures_window_s: float = 600.0
    failures_degraded: int = 3  # failed tasks on the node within the window
    failures_unhealthy: int = 6
    errors_unhealthy: int = 5  # a device's error counter at or above this
    errors_hold_s: float = 600.0  # how long a rise of an error counter keeps a node degraded

    def __post_init__(self) -> None:
        self.temperature.check("health.temperature")
        self.memory.check("health.memory", upper=100.0)
        self.disk.check("health.disk", upper=100.0)
        _ordered(
            "health.heartbeat", self.heartbeat_degraded_missed, self.heartbeat_unhealthy_missed
        )
        _ordered("health.task_failures", self.failures_degraded, self.failures_unhealthy)
        _above("health.task_failures.window_s", self.failures_window_s, 0, strict=True)
        _above("health.device_errors.unhealthy", self.errors_unhealthy, 1)
        _above("health.device_errors.hold_s", self.errors_hold_s, 0)


def _ordered(path: str, degraded: float, unhealthy: float) -> None:
    if not 0 < degraded <= unhealthy:
        raise _invalid(
            f"{path}: degraded ({degraded:g}) must be above 0 and at most "
            f"unhealthy ({unhealthy:g})",
            path,
        )


def _above(path: str, value: float, minimum: float, *, strict: bool = False) -> None:
    if value < minimum or (strict and value == minimum):
        words = "above" if strict else "at least"
        raise _invalid(f"{path}: {value:g} must be {words} {minimum:g}", path)


def _invalid(message: str, key: str) -> InvalidInput:
    return InvalidInput(message, field=key)


DEFAULT_THRESHOLDS = HealthThresholds()


# --------------------------------------------------------------------------- config

_BANDS = ("temperature", "memory", "disk")
# Scalar config sections: key -> (HealthThresholds attribute, whole numbers only).
_SCALARS: dict[str, dict[str, tuple[str, bool]]] = {
    "heartbeat": {
        "degraded_missed": ("heartbeat_degraded_missed", False),
        "unhealthy_missed": ("heartbeat_unhealthy_missed", False),
    },
    "task_failures": {
        "window_s": ("failures_window_s", False),
        "degraded": ("failures_degraded", True),
        "unhealthy": ("failures_unhealthy", True),
    },
    "device_errors": {
        "unhealthy": ("errors_unhealthy", True),
        "hold_s": ("errors_hold_s", False),
    },
}
_BAND_KEYS = tuple(f.name for f in fields(Band))


def thresholds_from_config(config: Mapping[str, Any]) -> HealthThresholds:
    """Thresholds from the ``[health]`` table of the server's config file.

    Shape (every key optional, the defaults shown)::

        [health.temperature]   # °C
        warning = 80
        critical = 90
        clear_margin = 5
        [health.memory]        # percent
        warning = 80
        critical = 90
        clear_margin = 5
        [health.disk]          # percent
        warning = 85
        critical = 95
        clear_margin = 5
        [health.heartbeat]     # heartbeat intervals
        degraded_missed = 2
        unhealthy_missed = 3
        [health.task_failures]
        window_s = 600
        degraded = 3
        unhealthy = 6
        [health.device_errors]
        unhealthy = 5
        hold_s = 600

    Unknown keys and wrong types raise InvalidInput naming the full key, so a
    typo is reported at start instead of silently using a default.
    """
    prefix = "health"
    _require_table(config, prefix)
    _reject_unknown(config, (*_BANDS, *_SCALARS), prefix)
    values: dict[str, Any] = {}
    for name in _BANDS:
        section = _table(config, name, prefix)
        default: Band = getattr(DEFAULT_THRESHOLDS, name)
        values[name] = _band(section, default, f"{prefix}.{name}")
    for name, keys in _SCALARS.items():
        section = _table(config, name, prefix)
        _reject_unknown(section, tuple(keys), f"{prefix}.{name}")
        for key, (attr, whole) in keys.items():
            if key in section:
                values[attr] = _number(section[key], f"{prefix}.{name}.{key}", whole=whole)
    return HealthThresholds(**values)  # cross-field checks name their keys too


def _require_table(value: object, path: str) -> None:
    if not isinstance(value, Mapping):
        raise _invalid(f"{path}: expected a table, got {type(value).__name__}", path)


def _table(config: Mapping[str, Any], name: str, prefix: str) -> Mapping[str, Any]:
    section = config.get(name, {})
    _require_table(section, f"{prefix}.{name}")
    return section  # type: ignore[no-any-return]


def _reject_unknown(table: Mapping[str, Any], known: Sequence[str], path: str) -> None:
    for key in table:
        if key not in known:
            raise _invalid(
                f"{path}.{key}: unknown key; known keys are {', '.join(sorted(known))}",
                f"{path}.{key}",
            )


def _band(section: Mapping[str, Any], default: Band, path: str) -> Band:
    _reject_unknown(section, _BAND_KEYS, path)
    parts = {
        key: _number(section[key], f"{path}.{key}") if key in section else getattr(default, key)
        for key in _BAND_KEYS
    }
    return Band(**parts)


def _number(value: object, path: str, *, whole: bool = False) -> float:
    # bool is an int in Python, but `warning = true` is a typo, not a threshold.
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (whole and not isinstance(value, int))
    ):
        kind = "a whole number" if whole else "a number"
        raise _invalid(f"{path}: expected {kind}, got {value!r}", path)
    if not math.isfinite(value):
        raise _invalid(f"{path}: expected a finite number, got {value!r}", path)
    return value


# --------------------------------------------------------------------------- report
