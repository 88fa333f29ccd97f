"""The ``agent`` command: an agent's settings from flags, its token from a
file or its environment, never from the command line."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated

import typer

from apportion.cli.options import ServerOpt, parse_pairs
from apportion.client import read_config, resolve


def _quantities(text: str | None, what: str) -> dict[str, int] | None:
    """``cpu=4,memory=8Gi`` into base units, with an error naming the bad part."""
    if not text:
        return None
    from apportion.core.resources import check_name, parse_quantity
    from apportion.exceptions import ApportionError

    out: dict[str, int] = {}
    for name, value in parse_pairs(text, what).items():
        try:
            out[check_name(name, what)] = parse_quantity(name, value, what)
        except ApportionError as exc:
            raise typer.BadParameter(exc.message) from None
    return out


def default_work_dir(name: str) -> Path:
    from apportion.service.settings import default_data_dir

    return default_data_dir() / "agent" / name


TOKEN_ON_COMMAND_LINE = (
    "--token: a token on the command line is readable by every local user in "
    "/proc/<pid>/cmdline; give the agent its token with --token-file PATH (a file only "
    "its user can read, mode 600), APPORTION_TOKEN_FILE, or APPORTION_TOKEN in its "
    "environment (which the agent scrubs)")


def agent(
    server: ServerOpt = None,
    token: Annotated[str | None, typer.Option(
        "--token", help="refused: use --token-file (a command line is public)")] = None,
    token_file: Annotated[Path | None, typer.Option(
        "--token-file", help="file (mode 600) holding the agent token (APPORTION_TOKEN_FILE)")]
    = None,
    task_user: Annotated[str | None, typer.Option(
        "--task-user", help="run tasks as this user (default when root: nobody; "
        "'root' only if said)")] = None,
    task_uids: Annotated[str | None, typer.Option(
        "--task-uids", help="give each task its own uid from LOW-HIGH (root only)")] = None,
    sandbox_dir: Annotated[Path | None, typer.Option(
        "--sandbox-dir", help="where task directories go (default WORK_DIR/sandbox, or "
        "/var/lib/apportion/sandbox/NAME when task users cannot reach that)")] = None,
    gpu_isolation: Annotated[str, typer.Option(
        "--gpu-isolation", help="auto (the strongest the host allows), cgroup_devices, "
        "mount_namespace or env_only")] = "auto",
    checkpoint_max: Annotated[str, typer.Option(
        "--checkpoint-max", help="largest checkpoint per task, packed or unpacked")] = "1Gi",
    name: Annotated[str | None, typer.Option("--name", help="node name (default: hostname)")]
    = None,
    labels: Annotated[str | None, typer.Option("--labels", help="facility=texas-1,zone=a")]
    = None,
    devices: Annotated[Path | None, typer.Option("--devices", help="devices TOML file")] = None,
    reserve: Annotated[str | None, typer.Option(
        "--reserve", help="kept for the system: cpu=500m,memory=1Gi")] = None,
    resources: Annotated[str | None, typer.Option(
        "--resources", help="declare capacity instead of discovering it: cpu=4,memory=8Gi,gpu=2")]
    = None,
    gpu_shares: Annotated[int | None, typer.Option(
        "--gpu-shares", min=2, max=100,
        help="offer each GPU as N shares (gpu: 1/N each, MPS) instead of whole")] = None,
    shared_gpus: Annotated[str | None, typer.Option(
        "--shared-gpus", help="with --gpu-shares: split only these GPU ids (0,1); the rest "
        "stay whole")] = None,
    work_dir: Annotated[Path | None, typer.Option(
        "--work-dir", help="task directories and logs")] = None,
    heartbeat: Annotated[float, typer.Option("--heartbeat", help="seconds")] = 10.0,
    stop_after_disconnect: Annotated[float, typer.Option(
        "--stop-after-disconnect", help="seconds cut off from the server before tasks stop")]
    = 60.0,
    rescan: Annotated[float, typer.Option("--rescan-interval", help="seconds")] = 300.0,
    poll_wait: Annotated[float, typer.Option("--poll-wait", help="long-poll seconds")] = 20.0,
    log_interval: Annotated[float, typer.Option("--log-interval", help="seconds")] = 1.0,
    watchdog: Annotated[float, typer.Option("--watchdog-interval", help="seconds")] = 1.0,
    on_exit: Annotated[str, typer.Option(
        "--on-exit", help="leave (tasks keep running for the next agent) or stop")] = "leave",
) -> None:
    """Run this node's agent: discover, register, heartbeat, run tasks."""
    from apportion.agent.gpu_isolation import GpuMode
    from apportion.agent.isolation import IsolationError, choose_isolation
    from apportion.agent.main import AgentConfig, run_agent
    from apportion.logs import configure_logging

    configure_logging()
    secret = _agent_token(token, token_file)
    if on_exit not in ("leave", "stop"):
        raise typer.BadParameter("--on-exit: leave or stop")
    try:
        isolation = choose_isolation(task_user, task_uids)
    except IsolationError as exc:
        raise typer.BadParameter(str(exc)) from None
    modes = ("auto", *(m.value for m in GpuMode))
    if gpu_isolation not in modes:
        raise typer.BadParameter(f"--gpu-isolation: one of {', '.join(modes)}")
    if shared_gpus is not None and gpu_shares is None:
        raise typer.BadParameter("--shared-gpus: say how many shares with --gpu-shares N")
    node = name or socket.gethostname()
    config = AgentConfig(
        resolve(server).server, secret, node, (work_dir or default_work_dir(node)).resolve(),
        labels=parse_pairs(labels, "--labels"), declared=_quantities(resources, "resources"),
        reserve=_quantities(reserve, "reserve") or {}, devices_file=devices,
        heartbeat_s=heartbeat, stop_after_disconnect_s=stop_after_disconnect, rescan_s=rescan,
        poll_wait_s=poll_wait, log_interval_s=log_interval, watchdog_s=watchdog,
        on_exit=on_exit, isolation=isolation,
        checkpoint_max=_quantity("storage", checkpoint_max, "--checkpoint-max"),
        sandbox_dir=sandbox_dir.resolve() if sandbox_dir else None,
        gpu_isolation=None if gpu_isolation == "auto" else GpuMode(gpu_isolation),
        gpu_shares=gpu_shares,
        shared_gpus=tuple(g.strip() for g in shared_gpus.split(",") if g.strip())
        if shared_gpus else None,
    )
    run_agent(config)


def _agent_token(token: str | None, token_file: Path | None) -> str:
    """The agent's token from a file or its (then scrubbed) environment;
    never from the command line."""
    from apportion.agent.credentials import TokenError, take_token

    if token is not None:
        raise typer.BadParameter(TOKEN_ON_COMMAND_LINE)
    try:
        secret = take_token(token_file)
    except TokenError as exc:
        raise typer.BadParameter(str(exc)) from None
    secret = secret or read_config().get("token")
    if not secret:
        raise typer.BadParameter("the agent needs an agent token: --token-file PATH, "
                                 "APPORTION_TOKEN_FILE or APPORTION_TOKEN")
    return str(secret)


def _quantity(resource: str, text: str, what: str) -> int:
    from apportion.core.resources import parse_quantity
    from apportion.exceptions import ApportionError

    try:
        value = parse_quantity(resource, text, what)
    except ApportionError as exc:
        raise typer.BadParameter(exc.message) from None
    if value <= 0:
        raise typer.BadParameter(f"{what}: must be more than 0")
    return value


def register(app: typer.Typer) -> None:
    """Add ``agent`` to the ``apportion`` command."""
    app.command("agent")(agent)
