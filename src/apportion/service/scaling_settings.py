"""``[scaling]`` of the server config file and where the node pools come from.

Apart from ``scaling_service.py`` so that the settings can be read (and
checked, every bad key named) without building a provider.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apportion.exceptions import InvalidInput
from apportion.providers.config import ProvidersConfig, config_from_data, load_config


@dataclass(frozen=True)
class ScalingSettings:
    """``[scaling]`` in the server config file."""

    interval_s: float = 15.0
    server_url: str | None = None
    """The URL new nodes reach this server at (default: APPORTION_SERVER_URL,
    else the address ``apportion server`` listens on)."""
    providers_file: Path | None = None
    """A provider config file (``[providers.*]``, ``[[pools]]``); they may
    also sit in the server config itself, or come from APPORTION_PROVIDERS_FILE."""
    join_token_ttl_s: float = 3600.0
    join_timeout_s: float = 900.0
    """A node asked for that has not registered by then is terminated."""
    keep_decisions: int = 50
    forecast_lookahead_s: float = 3600.0
    """How far ahead a pool's forecast peak is looked for: about the time a
    new node takes to start and join, plus a margin."""


_SETTING_KEYS = {"interval_s": float, "server_url": str, "providers_file": str,
                 "join_token_ttl_s": float, "join_timeout_s": float, "keep_decisions": int,
                 "forecast_lookahead_s": float}


def load_scaling(
    config_file: Path | None, providers_file: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[ScalingSettings, ProvidersConfig | None]:
    """``[scaling]`` of the server config file, and the pools: its own
    ``[providers.*]``/``[[pools]]``, else ``scaling.providers_file``, else
    ``providers_file`` (APPORTION_PROVIDERS_FILE). None: no pools."""
    data: dict[str, Any] = {}
    if config_file is not None:
        try:
            data = tomllib.loads(config_file.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise InvalidInput(f"{config_file}: cannot read: {exc}", field="config") from exc
    raw = data.get("scaling", {})
    if not isinstance(raw, dict):
        raise InvalidInput("scaling: expected a table", field="scaling")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        kind = _SETTING_KEYS.get(key)
        if kind is None:
            raise InvalidInput(f"scaling.{key}: unknown key; known: "
                               f"{', '.join(sorted(_SETTING_KEYS))}", field=f"scaling.{key}")
        if kind is str:
            if not isinstance(value, str) or not value:
                raise InvalidInput(f"scaling.{key}: a non-empty string", field=f"scaling.{key}")
            values[key] = Path(value) if key == "providers_file" else value
        else:
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise InvalidInput(f"scaling.{key}: a positive number", field=f"scaling.{key}")
            values[key] = kind(value)
    settings = ScalingSettings(**values)
    inline = "providers" in data or "pools" in data
    path = settings.providers_file or providers_file
    if inline and settings.providers_file is not None:
        raise InvalidInput(f"{config_file}: pools are given both here and in "
                           f"scaling.providers_file; keep one", field="scaling.providers_file")
    if inline:
        config = config_from_data({k: data[k] for k in ("providers", "pools") if k in data},
                                  env, source=str(config_file))
    elif path is not None:
        config = load_config(path, env)
    else:
        return settings, None
    return settings, config
