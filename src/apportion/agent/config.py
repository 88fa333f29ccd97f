"""``AgentConfig``: how one agent is set up (its servers and token, the
node's name, labels and declared resources, its work directory, its periods,
and how tasks are isolated), as ``apportion agent`` parses its options."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from apportion.agent import checkpoint
from apportion.agent.gpu_isolation import GpuMode
from apportion.agent.isolation import SHARED, Isolation


@dataclass(frozen=True)
class AgentConfig:
    server: str
    token: str
    name: str
    work_dir: Path
    labels: Mapping[str, str] = field(default_factory=dict)
    declared: Mapping[str, int] | None = None
    reserve: Mapping[str, int] = field(default_factory=dict)
    devices_file: Path | None = None
    gpu_shares: int | None = None
    """Offer GPUs as this many shares each (``gpu.shares``), not whole."""
    shared_gpus: tuple[str, ...] | None = None
    """Which GPUs (by id) ``gpu_shares`` splits; None: every one."""
    heartbeat_s: float = 10.0
    stop_after_disconnect_s: float = 60.0
    rescan_s: float = 300.0
    poll_wait_s: float = 20.0
    log_interval_s: float = 1.0
    watchdog_s: float = 1.0
    on_exit: str = "leave"
    """``leave``: tasks keep running for a new agent to adopt (the fence
    stops them after ``stop_after_disconnect_s`` if none comes); ``stop``:
    stop them before exiting (``apportion up``)."""
    fence: bool = True
    checkpoint_max: int = checkpoint.DEFAULT_MAX
    """Per task, both ways: a larger checkpoint is not packed or not unpacked."""
    isolation: Isolation = SHARED
    gpu_isolation: GpuMode | None = None
    """A GPU mode to insist on (None: the strongest the host allows)."""
    sandbox_dir: Path | None = None
    """Where task directories go (default ``<work_dir>/sandbox``, or
    ``/var/lib/apportion/sandbox/<name>`` where task users cannot reach that)."""
