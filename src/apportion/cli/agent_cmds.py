"""CLI commands around agents: ``agent``, ``submit`` (with ``--wait``),
``jobs logs``, ``nodes drain|cordon|uncordon|rescan``."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from apportion.cli.ledger_cmds import JsonOpt, ServerOpt, TokenOpt, client_for, parse_pairs
from apportion.cli.output import api_errors, console, err_console, show
from apportion.client import Client, ClientError, read_config, resolve

TERMINAL = ("succeeded", "failed", "cancelled")


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


def submit(
    command: Annotated[list[str] | None, typer.Argument(help="-- command to run (optional)")]
    = None,
    cpu: Annotated[str | None, typer.Option("--cpu")] = None,
    memory: Annotated[str | None, typer.Option("--memory")] = None,
    gpu: Annotated[str | None, typer.Option("--gpu")] = None,
    resource: Annotated[list[str] | None, typer.Option("--resource", help="NAME=QTY")] = None,
    resources_: Annotated[str | None, typer.Option(
        "--resources", help="'auto' (cpu and memory predicted from past runs) or "
        "cpu=2,memory=auto")] = None,
    count: Annotated[int, typer.Option("--count", help="number of tasks")] = 1,
    gang: Annotated[bool, typer.Option("--gang", help="place all tasks at once or none")]
    = False,
    array: Annotated[int | None, typer.Option(
        "--array", help="a job array of N independent tasks (APPORTION_ARRAY_INDEX)")] = None,
    name: Annotated[str | None, typer.Option("--name")] = None,
    queue: Annotated[str, typer.Option("--queue")] = "default",
    priority: Annotated[int, typer.Option("--priority")] = 0,
    constraint: Annotated[list[str] | None, typer.Option(
        "--constraint", "-c", help="facility=texas-1, gpu.model in (A100,H100), repeatable")]
    = None,
    preemptible: Annotated[bool, typer.Option("--preemptible")] = False,
    runtime: Annotated[str | None, typer.Option("--runtime", help="estimate: 3600, 90m")]
    = None,
    deadline: Annotated[str | None, typer.Option("--deadline", help="ISO 8601 or epoch")]
    = None,
    restart: Annotated[str | None, typer.Option(
        "--restart", help="never or on-failure")] = None,
    max_retries: Annotated[int | None, typer.Option("--max-retries")] = None,
    backoff: Annotated[str | None, typer.Option("--backoff", help="first retry delay: 5s")]
    = None,
    stop_signal: Annotated[str | None, typer.Option(
        "--stop-signal", help="signal asking a task to stop (default SIGTERM)")] = None,
    stop_grace: Annotated[str | None, typer.Option(
        "--stop-grace", help="then SIGKILL after this long (default 10s)")] = None,
    wait: Annotated[bool, typer.Option(
        "--wait", help="follow the job, stream its log, exit with its exit code")] = False,
    server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """Submit a job; without a command it is a pure resource lease."""
    resources: dict[str, Any] = {k: v for k, v in (("cpu", cpu), ("memory", memory),
                                                   ("gpu", gpu)) if v is not None}
    for item in resource or []:
        resources.update(parse_pairs(item, "--resource"))
    asked: dict[str, Any] | str = resources
    if resources_ is not None:
        if resources_.strip() == "auto":
            # Everything predicted, except what --cpu/--memory/--gpu pin.
            asked = {"cpu": "auto", "memory": "auto", **resources}
        else:
            asked = {**resources, **parse_pairs(resources_, "--resources")}
    if not asked:
        raise typer.BadParameter("ask for something: --cpu, --memory, --gpu, --resource or "
                                 "--resources auto")
    body: dict[str, Any] = {"resources": asked, "count": count, "gang": gang,
                            "queue": queue, "priority": priority,
                            "constraints": list(constraint or []), "preemptible": preemptible}
    if array is not None:
        body["array"] = array
    for key, value in (("name", name), ("runtime_estimate", runtime), ("deadline", deadline),
                       ("stop_signal", stop_signal), ("stop_grace", stop_grace)):
        if value is not None:
            body[key] = value
    if restart is not None or max_retries is not None or backoff is not None:
        body["restart"] = {k: v for k, v in (("policy", restart or "on-failure"),
                                             ("max_retries", max_retries),
                                             ("backoff", backoff)) if v is not None}
    if command:
        body["command"] = list(command)
    with api_errors(), client_for(server, token) as c:
        job = c.submit_job(body)
        if not wait:
            show(job, as_json, lambda j: console.print(
                f"submitted {j['id']} ({j['state']}) to queue {j['queue']}"))
            return
        err_console.print(f"submitted {job['id']} to queue {job['queue']}; following it")
        final = follow(c, job["id"], follow_job=True)
    raise typer.Exit(exit_code_of(final))


def exit_code_of(job: dict[str, Any]) -> int:
    """The job's exit code as a process exit status."""
    if job["state"] == "succeeded":
        return 0
    code = job.get("exit_code")
    return int(code) % 256 if isinstance(code, int) and code else 1


def jobs_logs(
    job_id: str,
    follow_: Annotated[bool, typer.Option("--follow", "-f", help="until the job ends")] = False,
    task: Annotated[str | None, typer.Option("--task", help="task index or id (default 0)")]
    = None,
    server: ServerOpt = None, token: TokenOpt = None,
) -> None:
    """A job's output: stdout to stdout, stderr to stderr."""
    with api_errors(), client_for(server, token) as c:
        follow(c, job_id, task=task, follow_job=follow_)


def follow(c: Client, job_id: str, *, task: str | None = None, follow_job: bool,
           poll_s: float = 0.25) -> dict[str, Any]:
    """Print a job's logs (moving on to newer attempts) until it ends;
    returns the job as it ended (or as it is, without ``follow_job``)."""
    reader = _LogReader(c, job_id, task)
    while True:
        state, printed = reader.round()
        if printed:
            continue
        if not follow_job or state in TERMINAL:
            # Agents ship a task's last bytes before they report its exit, so
            # a quiet round that began after the end has read everything.
            job: dict[str, Any] = c.get_job(job_id)
            return job
        time.sleep(poll_s)


class _LogReader:
    """Reads a job's two log streams from where it left off."""

    def __init__(self, c: Client, job_id: str, task: str | None) -> None:
        self.c, self.job_id, self.task = c, job_id, task
        self.offsets: dict[tuple[str, str], int] = {}
        self.current: str | None = None

    def round(self) -> tuple[str | None, bool]:
        """Print what is new; (the job's state when the round began, printed?)."""
        state: str | None = None
        printed = False
        for stream, out in (("stdout", sys.stdout), ("stderr", sys.stderr)):
            page = self._page(self.task, stream)
            if page is None:
                state = state or self.c.get_job(self.job_id)["state"]
                continue
            state = state or page["job_state"]
            if page["task"] != self.current:
                if self.current is not None:
                    printed |= self._drain(self.current)
                    err_console.print(f"--- attempt {page['attempt']} on {page['node']} ---")
                self.current = page["task"]
                page = self._page(self.current, stream)
            printed |= self._emit(page, stream, out)
        return state, printed

    def _page(self, task: str | None, stream: str) -> dict[str, Any] | None:
        offset = self.offsets.get((task or self.current or "", stream), 0)
        try:
            page: dict[str, Any] = self.c.job_logs(self.job_id, task=task, stream=stream,
                                                   offset=offset)
        except ClientError as exc:
            if exc.status == 404 and "has not run yet" in str(exc):
                return None
            raise
        return page

    def _emit(self, page: dict[str, Any] | None, stream: str, out: Any) -> bool:
        if page is None:
            return False
        if page["data"]:
            out.write(page["data"])
            out.flush()
        self.offsets[(page["task"], stream)] = page["next_offset"]
        return bool(page["data"])

    def _drain(self, task_id: str) -> bool:
        """Print the rest of an earlier attempt before moving on."""
        printed = False
        for stream, out in (("stdout", sys.stdout), ("stderr", sys.stderr)):
            while self._emit(self._page(task_id, stream), stream, out):
                printed = True
        return printed


def _node_op(action: str, name: str, server: str | None, token: str | None, as_json: bool,
             **kwargs: Any) -> None:
    with api_errors(), client_for(server, token) as c:
        node = getattr(c, f"{action}_node")(name, **kwargs)
    show(node, as_json, lambda n: console.print(
        f"{name}: {n.get('state', '')}" + (f", {n['running_tasks']} task(s) still running"
                                           if n.get("running_tasks") else "")))


def nodes_drain(
    name: str,
    deadline: Annotated[str | None, typer.Option(
        "--deadline", help="preempt what still runs after this long: 10m")] = None,
    server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """No new work; running tasks finish, or are preempted after --deadline."""
    _node_op("drain", name, server, token, as_json, deadline=deadline)


def nodes_cordon(name: str, server: ServerOpt = None, token: TokenOpt = None,
                 as_json: JsonOpt = False) -> None:
    """No new work on the node; running tasks keep running."""
    _node_op("cordon", name, server, token, as_json)


def nodes_uncordon(name: str, server: ServerOpt = None, token: TokenOpt = None,
                   as_json: JsonOpt = False) -> None:
    """Let the node take work again."""
    _node_op("uncordon", name, server, token, as_json)


def nodes_rescan(name: str, server: ServerOpt = None, token: TokenOpt = None,
                 as_json: JsonOpt = False) -> None:
    """Ask the node's agent to discover its hardware again now."""
    with api_errors(), client_for(server, token) as c:
        answer = c.rescan_node(name)
    show(answer, as_json, lambda a: console.print(f"{name}: rescan requested"))
