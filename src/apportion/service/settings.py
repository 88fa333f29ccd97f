"""Server settings, read once from the environment at start."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from apportion.core.resources import parse_quantity
from apportion.exceptions import InvalidInput
from apportion.store.database import sqlite_url


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "apportion"


@dataclass(frozen=True)
class Settings:
    """Everything a server process needs to know before it opens the store."""

    data_dir: Path = field(default_factory=default_data_dir)
    database_url: str | None = None
    admin_token: str | None = None
    sqlite_synchronous: str = "FULL"
    batch_max: int = 256
    sync_interval_s: float = 0.5
    strategy: str = "fifo"
    config_file: Path | None = None
    """TOML with [health] thresholds and [alerts] limits (APPORTION_CONFIG_FILE)."""
    backfill: str = "easy"
    providers_file: Path | None = None
    """Provider config for autoscaling pools (APPORTION_PROVIDERS_FILE)."""
    server_url: str | None = None
    """Where nodes a provider creates reach this server (APPORTION_SERVER_URL)."""
    server_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}")
    leader_timeout_s: float = 5.0
    """How long a dead leader can go unnoticed before another server leads
    (APPORTION_LEADER_TIMEOUT)."""
    blob_url: str | None = None
    """s3://bucket/prefix for checkpoints instead of the database (APPORTION_BLOB_URL)."""
    log_max: int | None = None
    """Bytes of log kept per task (APPORTION_LOG_MAX, default 16Mi)."""
    max_body: int = 1 << 20
    """Largest request body, except log chunks and checkpoints (APPORTION_MAX_BODY)."""
    checkpoint_max: int | None = None
    """Bytes of checkpoint accepted per task (APPORTION_CHECKPOINT_MAX; default
    256Mi in the database, 1Gi in a bucket)."""

    @property
    def url(self) -> str:
        return self.database_url or sqlite_url(self.data_dir)

    @property
    def shared_database(self) -> bool:
        """Other servers may write the same database: poll their changes."""
        return not self.url.startswith("sqlite")

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        env = os.environ
        values: dict[str, object] = {}
        if env.get("APPORTION_DATA_DIR"):
            values["data_dir"] = Path(env["APPORTION_DATA_DIR"])
        if env.get("APPORTION_DATABASE_URL"):
            values["database_url"] = env["APPORTION_DATABASE_URL"]
        if env.get("APPORTION_ADMIN_TOKEN"):
            values["admin_token"] = env["APPORTION_ADMIN_TOKEN"]
        if env.get("APPORTION_SQLITE_SYNCHRONOUS"):
            values["sqlite_synchronous"] = env["APPORTION_SQLITE_SYNCHRONOUS"].upper()
        if env.get("APPORTION_CONFIG_FILE"):
            values["config_file"] = Path(env["APPORTION_CONFIG_FILE"])
        if env.get("APPORTION_PROVIDERS_FILE"):
            values["providers_file"] = Path(env["APPORTION_PROVIDERS_FILE"])
        if env.get("APPORTION_SERVER_URL"):
            values["server_url"] = env["APPORTION_SERVER_URL"]
        if env.get("APPORTION_LEADER_TIMEOUT"):
            values["leader_timeout_s"] = _seconds(env["APPORTION_LEADER_TIMEOUT"],
                                                  "APPORTION_LEADER_TIMEOUT")
        if env.get("APPORTION_SYNC_INTERVAL"):
            values["sync_interval_s"] = _seconds(env["APPORTION_SYNC_INTERVAL"],
                                                 "APPORTION_SYNC_INTERVAL")
        if env.get("APPORTION_BLOB_URL"):
            values["blob_url"] = env["APPORTION_BLOB_URL"]
        for key, name in (("log_max", "APPORTION_LOG_MAX"), ("max_body", "APPORTION_MAX_BODY"),
                          ("checkpoint_max", "APPORTION_CHECKPOINT_MAX")):
            if env.get(name):
                values[key] = parse_quantity("memory", env[name], name)
        for key in ("strategy", "backfill"):
            if env.get(f"APPORTION_{key.upper()}"):
                values[key] = env[f"APPORTION_{key.upper()}"]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]


def _seconds(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InvalidInput(f"{name}: {text!r} is not a number of seconds", field=name) from None
    if not 0 < value <= 3600:
        raise InvalidInput(f"{name}: must be more than 0 and at most 3600 seconds", field=name)
    return value
