"""Every ``APPORTION_*`` setting, in one model read from the environment.

The server builds it once at start (``Settings()``); the composition root
hands each service the values it needs, so no other module reads the
environment for a setting. The command-line client and the agent read
their few variables (``APPORTION_SERVER``, ``APPORTION_TOKEN``,
``APPORTION_TOKEN_FILE``, ``APPORTION_CONFIG``, ``APPORTION_LOG_LEVEL``)
without this model, to start in a few milliseconds; they are declared here
all the same, and a test checks that every ``APPORTION_*`` name the code
reads is a field of this model and a row of the README's table (which
``settings_table`` writes). What a task is given (``APPORTION_JOB_ID`` and
the rest) is not a setting: ``apportion/protocol.py`` defines that contract.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BeforeValidator, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from apportion.core.resources import parse_quantity
from apportion.exceptions import InvalidInput
from apportion.store.database import sqlite_url


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "apportion"


def _bytes(value: Any) -> Any:
    """``16Mi``, ``1G`` or a number of bytes."""
    if isinstance(value, str):
        return parse_quantity("memory", value.strip(), "size")
    return value


Bytes = Annotated[int, BeforeValidator(_bytes), Field(gt=0)]
Seconds = Annotated[float, Field(gt=0, le=86_400)]


def _env(name: str, default: Any, description: str) -> Any:
    """A field read from a variable whose name is not ``APPORTION_`` + the
    field's name (the field carries its unit: ``_s`` for seconds)."""
    return Field(default, validation_alias=AliasChoices(name), description=description)


class Settings(BaseSettings):
    """The server's, the agent's and the CLI's settings."""

    model_config = SettingsConfigDict(env_prefix="APPORTION_", frozen=True, extra="ignore",
                                      populate_by_name=True)

    # -- the store --------------------------------------------------------------------------
    data_dir: Path = Field(default_factory=default_data_dir,
                           description="SQLite file, spooled uploads; default "
                                       "~/.local/share/apportion (server, up)")
    database_url: str | None = Field(
        None, description="postgresql://... for several servers on one database (server)")
    sqlite_synchronous: Annotated[Literal["FULL", "NORMAL", "OFF"],
                                  BeforeValidator(lambda v: v.upper() if isinstance(v, str)
                                                  else v)] = Field(
        "FULL", description="SQLite fsync per commit (server)")
    batch_max: Annotated[int, Field(ge=1, le=10_000)] = Field(
        256, description="writes that share one transaction at most (server)")
    # -- who the server is ------------------------------------------------------------------
    admin_token: str | None = Field(
        None, description="the token called admin, at least 24 characters (server)")
    server_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-"
                                                   f"{uuid.uuid4().hex[:8]}",
                           description="this server's name in `apportion servers` (server)")
    server_url: str | None = Field(
        None, description="where agents and other servers reach this one (server)")
    config_file: Path | None = Field(
        None, description="TOML: [health], [alerts], [history], [planning], [scaling] (server)")
    providers_file: Path | None = Field(
        None, description="TOML: providers and node pools for autoscaling (server)")
    # -- several servers ----------------------------------------------------------------------
    leader_timeout_s: Seconds = _env(
        "APPORTION_LEADER_TIMEOUT", 5.0,
        "seconds a dead leader can go unnoticed before another server leads (server)")
    sync_interval_s: Seconds = _env(
        "APPORTION_SYNC_INTERVAL", 0.5,
        "seconds between reads of the other servers' events; NOTIFY wakes it sooner (server)")
    # -- scheduling ---------------------------------------------------------------------------
    strategy: str = Field("fifo", description="queue order: fifo, priority, fairshare, sjf, "
                                              "sla, cost, affinity, adaptive (server)")
    backfill: str = Field("easy", description="none, easy or conservative (server)")
    # -- limits ---------------------------------------------------------------------------------
    max_body: Bytes = Field(1 << 20, description="largest request body, except log chunks "
                                                 "and checkpoints (server)")
    log_max: Bytes | None = Field(None, description="log bytes kept per task; default 16Mi "
                                                    "(server)")
    checkpoint_max: Bytes | None = Field(
        None, description="checkpoint bytes per task; default 256Mi in the database, 1Gi "
                          "in a bucket (server)")
    blob_url: str | None = Field(None, description="s3://bucket/prefix for checkpoints "
                                                   "(server)")
    blob_endpoint: str | None = Field(None, description="an S3-compatible endpoint URL "
                                                        "(server)")
    # -- agents ---------------------------------------------------------------------------------
    node_down_after_s: Seconds | None = _env(
        "APPORTION_NODE_DOWN_AFTER", None,
        "seconds of silence after which a node is down, its tasks requeued; default 60 (server)")
    node_sweep_interval_s: Seconds | None = _env(
        "APPORTION_NODE_SWEEP_INTERVAL", None,
        "seconds between the leader's sweeps for silent nodes; default 1 (server)")
    pickup_deadline_s: Seconds | None = _env(
        "APPORTION_PICKUP_DEADLINE", None,
        "seconds a placed task may wait for its agent to start it before it is placed "
        "again; default 60 (server)")
    poll_hold_s: Seconds | None = _env(
        "APPORTION_POLL_HOLD", None,
        "seconds an agent's long-poll is held; default 20 (server)")
    # -- history and planning -------------------------------------------------------------------
    history_interval_s: Seconds | None = _env(
        "APPORTION_HISTORY_INTERVAL", None,
        "seconds between history samples (server)")
    history_raw_s: float | None = _env(
        "APPORTION_HISTORY_RAW", None,
        "seconds raw history samples are kept (server)")
    history_rollup_step_s: float | None = _env(
        "APPORTION_HISTORY_ROLLUP_STEP", None,
        "seconds per history roll-up (server)")
    history_rollup_s: float | None = _env(
        "APPORTION_HISTORY_ROLLUP", None,
        "seconds roll-ups are kept (server)")
    history_max_points: int | None = _env(
        "APPORTION_HISTORY_MAX_POINTS", None,
        "points one history series keeps at most (server)")
    planning_interval_s: Seconds | None = _env(
        "APPORTION_PLANNING_INTERVAL", None,
        "seconds between capacity forecasts; default 600 (server)")
    # -- events out -----------------------------------------------------------------------------
    nats_url: str | None = Field(None, description="nats://host:4222: publish every event "
                                                   "to JetStream (server)")
    nats_subject_prefix: str = Field("apportion.events", description="NATS subjects' prefix "
                                                                     "(server)")
    # -- logs -----------------------------------------------------------------------------------
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING, ERROR (every process)")
    access_log: bool = Field(False, description="a log line per request, not only per 5xx "
                                                "(server)")
    # -- the CLI and the agent ------------------------------------------------------------------
    server: str | None = Field(None, description="the API URL(s) the CLI and the agent use; "
                                                 "an agent takes a comma-separated list")
    token: str | None = Field(None, description="the CLI's token, or the agent's (which "
                                                "removes it from its environment)")
    token_file: Path | None = Field(None, description="a 0600 file holding the agent's token")
    config: Path | None = Field(None, description="the CLI's config file (default "
                                                  "~/.config/apportion/config.toml)")

    @property
    def url(self) -> str:
        return self.database_url or sqlite_url(self.data_dir)

    @property
    def shared_database(self) -> bool:
        """Other servers may write the same database: follow their changes."""
        return not self.url.startswith("sqlite")

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """The environment, with ``overrides`` (None: not overridden); a bad
        value is an ``InvalidInput`` naming its variable."""
        given = {k: v for k, v in overrides.items() if v is not None}
        try:
            return cls(**given)
        except ValidationError as exc:
            first = exc.errors()[0]
            name = _variable(str(first["loc"][0]) if first["loc"] else "")
            raise InvalidInput(f"{name}: {first['msg']}", field=name) from None


def _variable(field: str) -> str:
    info = Settings.model_fields.get(field)
    alias = info.validation_alias if info is not None else None
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return f"APPORTION_{field.upper()}"


def variables() -> dict[str, tuple[str, Any, str]]:
    """Every variable: name -> (field, default, what it does)."""
    out = {}
    for name, info in Settings.model_fields.items():
        default = None if info.default_factory is not None else info.default
        out[_variable(name)] = (name, default, info.description or "")
    return out


def settings_table() -> str:
    """The README's table of variables, as markdown."""
    rows = ["| variable | default | what it does |", "|---|---|---|"]
    for variable, (_, default, what) in sorted(variables().items()):
        shown = "—" if default is None else f"`{default}`"
        rows.append(f"| `{variable}` | {shown} | {what} |")
    return "\n".join(rows)


if __name__ == "__main__":  # python -m apportion.service.settings: the README's table
    print(settings_table())
