"""The ``local`` provider: nodes are ``apportion agent`` processes on this machine.

Each node is one agent process, started in its own session (so it and
everything it forks form one process group), declaring the node type's
resources with ``--resources`` (several agents share this machine, so
discovery would have each offer all of it), with its own work directory under
``state_dir``. The join token reaches the agent through ``APPORTION_TOKEN`` in
its environment, never on the command line (which any user can read with
``ps``); every other ``APPORTION_*`` variable of the server's environment
(an admin token, the database URL) is left out of the agent's.

Pids go to ``state_dir/nodes.json`` with each process's start time, so a
provider built again on the same ``state_dir`` (a server restart) finds its
nodes, and a pid reused by an unrelated process is not mistaken for one.

``terminate`` sends SIGTERM to the node's process group, waits up to
``grace_s`` (for all nodes of the call together), then SIGKILLs the group.

Settings:

| key | default | meaning |
|---|---|---|
| ``state_dir`` | ``$XDG_DATA_HOME/apportion/providers/<name>`` | pids and per-node work dirs |
| ``command`` | the agent command below | argv template |
| ``grace_s`` | 10 | SIGTERM to SIGKILL |
| ``env`` | {} | extra environment for the agents |
| ``declare_resources`` | true | pass ``--resources`` from the node type |

A pool's ``settings`` may set its own ``command``, ``env`` (merged over the
provider's) and ``declare_resources``; ``state_dir`` and ``grace_s`` are the
provider's.

The command template is a list of strings with ``{python}``, ``{server}``,
``{name}``, ``{resources}``, ``{labels}``, ``{work_dir}``, ``{pool}`` and
``{node_type}`` placeholders (``{{`` for a literal brace).
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from apportion.core.resources import format_vector
from apportion.exceptions import ProviderConfigError, ProviderError
from apportion.providers.base import (
    InstanceState,
    JoinSpec,
    Provider,
    ProvisionedNode,
    terminated,
)
from apportion.providers.bootstrap import check_join
from apportion.providers.secret import reveal

DEFAULT_COMMAND = (
    "{python}", "-m", "apportion.cli.main", "agent",
    "--server", "{server}",
    "--name", "{name}",
    "--resources", "{resources}",
    "--labels", "{labels}",
    "--work-dir", "{work_dir}",
    "--on-exit", "stop",
)
"""``--on-exit stop``: a terminated node stops whatever it still runs (a
scale-down only terminates drained, empty nodes, so normally nothing)."""

PLACEHOLDERS = ("python", "server", "name", "resources", "labels", "work_dir", "pool",
                "node_type")
STATE_FILE = "nodes.json"
KEEP_TERMINATED_S = 24 * 3600.0
"""Terminated nodes stay in the state file (for ``status``) this long."""


@dataclass(slots=True)
class _Record:
    id: str
    node_name: str
    pool: str
    node_type: str
    pid: int
    started: float
    """The process's start time (psutil), to tell it from a reused pid."""
    created_at: float
    work_dir: str
    log: str
    terminating: bool = False
    terminated_at: float | None = None
    exit_code: int | None = None
    detail: str = ""


class LocalProvider(Provider):
    kind = "local"

    def __init__(self, name: str, settings: Mapping[str, Any]) -> None:
        super().__init__(name, settings)
        state_dir = reveal(settings.get("state_dir"))
        if state_dir is None:
            from apportion.service.settings import default_data_dir

            data = os.environ.get("APPORTION_DATA_DIR")
            state_dir = (Path(data) if data else default_data_dir()) / "providers" / name
        self.state_dir = Path(state_dir).expanduser().resolve()
        self.command = _command(settings.get("command", DEFAULT_COMMAND), f"providers.{name}")
        grace = settings.get("grace_s", 10.0)
        if isinstance(grace, bool) or not isinstance(grace, int | float) or grace < 0:
            raise ProviderConfigError(f"providers.{name}.grace_s: expected seconds >= 0",
                                      field=f"providers.{name}.grace_s")
        self.grace_s = float(grace)
        self.extra_env = _env(settings.get("env", {}), f"providers.{name}")
        self.declare_resources = bool(settings.get("declare_resources", True))
        # A pool's own command, env (merged over the provider's) and
        # declare_resources, checked now so a bad override fails at start.
        self._pool_launch = {
            pool: _Launch(
                _command(over["command"], f"pools.{pool}.settings") if "command" in over
                else self.command,
                {**self.extra_env, **_env(over.get("env", {}), f"pools.{pool}.settings")},
                bool(over.get("declare_resources", self.declare_resources)),
            )
            for pool, over in self._pool_settings.items()
        }
        self._lock = threading.RLock()
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    # -- the interface ----------------------------------------------------------

    def create(
        self, pool: str, node_type: str, count: int, join: JoinSpec
    ) -> builtins.list[ProvisionedNode]:
        kind = self.check_create(pool, node_type, count)
        labels = self.node_labels(pool, kind, join)
        check_join(join, labels)
        made: builtins.list[ProvisionedNode] = []
        names = join.names(pool, count)
        with self._state() as records:
            for name in names:
                if name in records and records[name].terminated_at is None:
                    raise ProviderError(f"provider {self.name}: node {name} already exists",
                                        nodes=made, provider=self.name)
                try:
                    record = self._spawn(name, pool, kind.name, kind.resources, labels, join)
                except OSError as exc:
                    raise ProviderError(
                        f"provider {self.name}: could not start {self.command[0]}: {exc}",
                        nodes=made, provider=self.name,
                    ) from exc
                records[record.id] = record
                made.append(self._node(record))
        return made

    def terminate(self, ids: Sequence[str]) -> builtins.list[ProvisionedNode]:
        with self._state() as records:
            victims: builtins.list[_Record] = []
            for id in ids:
                record = records.get(id)
                if record is None or record.terminated_at is not None:
                    continue
                record.terminating = True
                if self._alive(record):
                    victims.append(record)
                    _signal_group(record.pid, signal.SIGTERM)
            deadline = time.monotonic() + self.grace_s
            while any(self._alive(r) for r in victims) and time.monotonic() < deadline:
                time.sleep(0.05)
            for record in victims:
                # Also reaches anything the agent left in its group after exiting.
                _signal_group(record.pid, signal.SIGKILL)
            deadline = time.monotonic() + 5.0
            while any(self._alive(r) for r in victims) and time.monotonic() < deadline:
                time.sleep(0.02)
            out = []
            for id in ids:
                record = records.get(id)
                if record is None:
                    out.append(terminated(id, self.name, "unknown to this provider"))
                    continue
                self._refresh(record)
                out.append(self._node(record))
        return out

    def status(self, id: str) -> ProvisionedNode:
        with self._state() as records:
            record = records.get(id)
            if record is None:
                return terminated(id, self.name, "unknown to this provider")
            self._refresh(record)
            return self._node(record)

    def list(self, pool: str | None = None) -> builtins.list[ProvisionedNode]:
        with self._state() as records:
            out = []
            for record in sorted(records.values(), key=lambda r: (r.created_at, r.id)):
                if pool is not None and record.pool != pool:
                    continue
                self._refresh(record)
                if record.terminated_at is None:
                    out.append(self._node(record))
            return out

    # -- processes --------------------------------------------------------------

    def _spawn(
        self, name: str, pool: str, node_type: str, resources: Mapping[str, int],
        labels: Mapping[str, str], join: JoinSpec,
    ) -> _Record:
        launch = self._pool_launch.get(
            pool, _Launch(self.command, self.extra_env, self.declare_resources))
        node_dir = self.state_dir / "nodes" / name
        work_dir = node_dir / "work"
        work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        log = node_dir / "agent.log"
        values = {
            "python": sys.executable,
            "server": join.server_url,
            "name": name,
            "resources": ",".join(f"{k}={v}" for k, v in format_vector(resources).items())
            if launch.declare_resources else "",
            "labels": ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
            "work_dir": str(work_dir),
            "pool": pool,
            "node_type": node_type,
        }
        argv = [part.format_map(values) for part in launch.command]
        if not launch.declare_resources:
            argv = _drop_empty_option(argv, "--resources")
        env = {k: v for k, v in os.environ.items() if not k.startswith("APPORTION_")}
        env.update(launch.env)
        env["APPORTION_SERVER"] = join.server_url
        env["APPORTION_TOKEN"] = join.join_token.reveal()
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            pid = os.posix_spawnp(
                argv[0], argv, env,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, fd, 1),
                    (os.POSIX_SPAWN_DUP2, fd, 2),
                ],
                setsid=True,
            )
        finally:
            os.close(fd)
        try:
            started = psutil.Process(pid).create_time()
        except psutil.NoSuchProcess:  # already gone; status() reports it failed
            started = 0.0
        return _Record(name, name, pool, node_type, pid, started, time.time(), str(work_dir),
                       str(log))

    def _alive(self, record: _Record) -> bool:
        """Whether the record's process still runs; reaps it (and records its
        exit code) when it is this process's child and has exited."""
        if record.terminated_at is not None:
            return False
        with contextlib.suppress(ChildProcessError):
            pid, status = os.waitpid(record.pid, os.WNOHANG)
            if pid:
                record.exit_code = os.waitstatus_to_exitcode(status)
                return False
        try:
            process = psutil.Process(record.pid)
            if record.started and abs(process.create_time() - record.started) > 1.0:
                return False  # the pid now belongs to another process
            return process.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def _refresh(self, record: _Record) -> None:
        if record.terminated_at is not None or self._alive(record):
            return
        if record.terminating:
            record.terminated_at = time.time()
            record.detail = ""
        elif not record.detail:
            code = "unknown" if record.exit_code is None else str(record.exit_code)
            how = (f"killed by signal {-record.exit_code}" if record.exit_code is not None
                   and record.exit_code < 0 else f"exited with code {code}")
            record.detail = f"agent process {record.pid} {how}; see {record.log}"

    def _node(self, record: _Record) -> ProvisionedNode:
        if record.terminated_at is not None:
            state = InstanceState.TERMINATED
        elif record.terminating:
            state = InstanceState.TERMINATING
        elif record.detail:
            state = InstanceState.FAILED
        else:
            state = InstanceState.RUNNING
        return ProvisionedNode(record.id, record.node_name, record.pool, record.node_type,
                               state, record.created_at, "127.0.0.1", self.name, record.detail)

    # -- the state file ---------------------------------------------------------

    @contextlib.contextmanager
    def _state(self) -> Iterator[dict[str, _Record]]:
        """The records, locked against this process's threads and other
        processes on the same ``state_dir``; written back on exit."""
        path = self.state_dir / STATE_FILE
        with self._lock, open(self.state_dir / ".lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            records = _read(path)
            try:
                yield records
            finally:
                now = time.time()
                keep = {k: r for k, r in records.items()
                        if r.terminated_at is None or now - r.terminated_at < KEEP_TERMINATED_S}
                _write(path, keep)


def _read(path: Path) -> dict[str, _Record]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ProviderError(f"{path}: cannot read the local provider's state: {exc}") from exc
    return {k: _Record(**v) for k, v in data.get("nodes", {}).items()}


def _write(path: Path, records: Mapping[str, _Record]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"version": 1, "nodes": {k: asdict(r) for k, r in
                                                       records.items()}}, indent=1))
    os.replace(tmp, path)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


@dataclass(frozen=True, slots=True)
class _Launch:
    """How a pool's agents are started."""

    command: tuple[str, ...]
    env: dict[str, str]
    declare_resources: bool


def _command(value: object, at: str) -> tuple[str, ...]:
    """A validated agent command template (``at``: where it was configured)."""
    if (not isinstance(value, Sequence) or isinstance(value, str) or not value
            or not all(isinstance(reveal(c), str) for c in value)):
        raise ProviderConfigError(f"{at}.command: expected a non-empty list of strings",
                                  field=f"{at}.command")
    command = tuple(str(reveal(c)) for c in value)
    dummy = dict.fromkeys(PLACEHOLDERS, "x")
    for part in command:
        try:
            part.format_map(dummy)
        except (KeyError, IndexError, ValueError) as exc:
            raise ProviderConfigError(
                f"{at}.command: {part!r}: unknown or malformed placeholder "
                f"({exc}); use {', '.join('{' + p + '}' for p in PLACEHOLDERS)}",
                field=f"{at}.command") from exc
    return command


def _env(value: object, at: str) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise ProviderConfigError(f"{at}.env: expected a table", field=f"{at}.env")
    return {str(k): str(reveal(v)) for k, v in value.items()}


def _drop_empty_option(argv: builtins.list[str], option: str) -> builtins.list[str]:
    """Remove ``option ''`` from argv (``--resources`` when not declaring)."""
    out: builtins.list[str] = []
    skip = False
    for i, part in enumerate(argv):
        if skip:
            skip = False
            continue
        if part == option and i + 1 < len(argv) and argv[i + 1] == "":
            skip = True
            continue
        out.append(part)
    return out
