"""The server's config file (TOML, ``APPORTION_CONFIG_FILE``): health
thresholds and alert limits. Every key is optional; an unknown or malformed
one is refused at start with its name."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from apportion.core.health import DEFAULT_THRESHOLDS, HealthThresholds, thresholds_from_config
from apportion.exceptions import InvalidInput
from apportion.service.alerts_service import AlertSettings
from apportion.service.planning_service import PlanningSettings


@dataclass(frozen=True)
class ServerConfig:
    health: HealthThresholds = DEFAULT_THRESHOLDS
    alerts: AlertSettings = field(default_factory=AlertSettings)
    planning: PlanningSettings = field(default_factory=PlanningSettings)


# Sections read here, plus those other services read from the same file
# (history_service reads [history]; scaling_service reads [scaling], and
# [providers.*] and [[pools]] when they sit here rather than in a providers
# file); any other name is a typo to refuse.
SECTIONS = frozenset({"health", "alerts", "history", "planning", "scaling", "providers",
                      "pools"})


def load_server_config(path: Path | None, *,
                       planning_interval_s: float | None = None) -> ServerConfig:
    if path is None:
        return ServerConfig(planning=PlanningSettings.from_config({}, planning_interval_s))
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InvalidInput(f"{path}: cannot read the server config: {exc}", field="config") from exc
    unknown = sorted(set(data) - SECTIONS)
    if unknown:
        known = ", ".join(f"[{s}]" for s in sorted(SECTIONS))
        raise InvalidInput(f"{path}: unknown section [{unknown[0]}]; known: {known}",
                           field=unknown[0])
    return ServerConfig(thresholds_from_config(data.get("health", {})),
                        _alert_settings(data.get("alerts", {})),
                        PlanningSettings.from_config(data.get("planning", {}),
                                                     planning_interval_s))


SHARES = ("quota_near_share", "capacity_threshold", "capacity_critical")


def _alert_settings(raw: Mapping[str, Any]) -> AlertSettings:
    known = {f.name: f for f in fields(AlertSettings)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            raise InvalidInput(f"alerts.{key}: unknown key; known: {', '.join(sorted(known))}",
                               field=f"alerts.{key}")
        if key == "webhooks":
            if not isinstance(value, list) or not all(isinstance(u, str) for u in value):
                raise InvalidInput("alerts.webhooks: a list of URLs", field="alerts.webhooks")
            values[key] = tuple(value)
        elif key == "webhook_attempts":
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 20:
                raise InvalidInput("alerts.webhook_attempts: an integer from 1 to 20",
                                   field=f"alerts.{key}")
            values[key] = value
        else:
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise InvalidInput(f"alerts.{key}: a positive number", field=f"alerts.{key}")
            if key in SHARES and value > 1:
                raise InvalidInput(f"alerts.{key}: a share from 0 to 1 (0.9 is 90 %)",
                                   field=f"alerts.{key}")
            values[key] = float(value)
    return AlertSettings(**values)
