"""The ``apportion`` command: ``server``, ``up`` and the API's commands."""

from __future__ import annotations

import copy
import errno
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from apportion.cli import (
    agent_cmds,
    cluster_cmds,
    dashboard_cmds,
    jobs_cmds,
    ledger_cmds,
    nodes_cmds,
    observe_cmds,
    planning_cmds,
    scaling_cmds,
    simulate,
)
from apportion.cli.output import console, emit_json, err_console, error_object
from apportion.client import Client, ClientError, read_config, write_config

if TYPE_CHECKING:
    # The server stack (SQLAlchemy, Alembic, uvicorn) is imported by the
    # commands that run a server, not by every client command (0.5 s each).
    from apportion.service.settings import Settings

class _App(typer.Typer):
    """The main app, which builds only the command a call names.

    Typer turns every registered command into a click command (signatures,
    type hints, a coercion adapter per parameter) before it parses anything;
    for this CLI's ~40 commands that was a large part of a short command's
    run time (``bench/bench_cli.py``). A call that names a command or group
    first builds the app with that one registered, which parses, helps and
    fails the same way; anything else (``--help``, a typo) builds them all.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        argv = sys.argv[1:]
        name = argv[0] if argv and not argv[0].startswith("-") else None
        pruned = self._only(name) if name is not None else None
        options = argv[:argv.index("--")] if "--" in argv else argv  # not a job's command's
        if "--json" in options:
            return _json_errors(pruned or self, *args, **kwargs)
        return typer.Typer.__call__(pruned or self, *args, **kwargs)

    def _only(self, name: str) -> typer.Typer | None:
        commands = [c for c in self.registered_commands if _name_of(c) == name]
        groups = [g for g in self.registered_groups if g.name == name]
        if not commands and not groups:
            return None
        pruned = copy.copy(self)
        # A hidden second command keeps it a group: a Typer app of one
        # command would turn that command into the whole program.
        pruned.registered_commands = [*commands, *_HIDDEN.registered_commands]
        pruned.registered_groups = groups
        return pruned


def _json_errors(app: typer.Typer, *args: Any, **kwargs: Any) -> Any:
    """Run ``app`` so that a usage error (an unknown option, a bad value) is
    the same JSON object on stdout as an API error is under ``--json``, with
    click's exit status (2). Click prints usage errors itself in standalone
    mode, so this one runs without it and does what it would do otherwise."""
    # Typer 0.29 vendors click; its exception classes live there.
    from typer._click.exceptions import ClickException, UsageError

    try:
        rv = typer.Typer.__call__(app, *args, standalone_mode=False, **kwargs)
    except ClickException as exc:
        code = "usage" if isinstance(exc, UsageError) else "error"
        emit_json(error_object(code, exc.format_message(), None))
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)


_HIDDEN = typer.Typer()


@_HIDDEN.command("-", hidden=True)
def _placeholder() -> None:  # pragma: no cover - never called
    """Never listed, never called."""


def _name_of(info: Any) -> str | None:
    if info.name:
        return str(info.name)
    callback = info.callback
    return callback.__name__.lower().replace("_", "-") if callback else None


app = _App(
    name="apportion",
    help="Resource manager for heterogeneous compute clusters.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Click's plain help: Rich's shows `--once <bool>` for a flag and keeps a
    # docstring's line breaks mid-sentence; click reflows to the terminal.
    rich_markup_mode=None,
)
app.add_typer(nodes_cmds.nodes_app, name="nodes")
app.add_typer(ledger_cmds.allocations_app, name="allocations")
app.add_typer(ledger_cmds.token_app, name="token")
app.command("alloc")(ledger_cmds.alloc)
app.command("release")(ledger_cmds.release)
app.command("capacity")(ledger_cmds.capacity)
app.command("alerts")(ledger_cmds.alerts)
app.command("servers")(cluster_cmds.servers)
app.add_typer(jobs_cmds.jobs_app, name="jobs")
app.add_typer(jobs_cmds.queues_app, name="queues")
app.command("submit")(jobs_cmds.submit)
app.command("agent")(agent_cmds.agent)
observe_cmds.register(app)
planning_cmds.register(app)
scaling_cmds.register(app)
simulate.register(app)
dashboard_cmds.register(app)

HostOpt = Annotated[str, typer.Option("--host", help="address to listen on")]
PortOpt = Annotated[int, typer.Option("--port", help="port to listen on")]


def _own_url(host: str, port: int) -> str:
    """The URL this server answers at, for nodes a provider starts (when
    neither APPORTION_SERVER_URL nor ``scaling.server_url`` says otherwise)."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _private_files() -> None:
    """What the server writes (the database, logs, spooled checkpoints) is
    readable by its own user only."""
    os.umask(0o077)


def _serve(settings: Settings, host: str, port: int,
           sockets: list[socket.socket] | None = None,
           on_stop: Callable[[Any, bool], None] | None = None) -> None:
    """Serve until stopped; ``on_stop(app, again)`` is told when a stop
    begins (``again``: a second Ctrl-C, which stops at once)."""
    import uvicorn

    from apportion.server.app import StoppingServer, create_app

    class Server(StoppingServer):
        def handle_exit(self, sig: int, frame: Any) -> None:
            if on_stop is not None:
                on_stop(self.app, self.should_exit)
            super().handle_exit(sig, frame)

    if settings.server_url is None:
        # Without this, nodes a pool starts would look for a server on 8080.
        settings = settings.model_copy(update={"server_url": _own_url(host, port)})
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        # uvloop and httptools when installed (uvicorn[standard]); asyncio and
        # h11 otherwise, so a plain `pip install uvicorn` still serves.
        loop="auto",
        http="auto",
        # Keep idle connections longer than clients pool them (httpx: 5 s), so a
        # client never sends on a connection the server is just closing.
        timeout_keep_alive=75,
        # Agents hold a long-poll open; a graceful stop must not wait out
        # their hold time (they retry, and a restarted server answers them).
        timeout_graceful_shutdown=GRACEFUL_S,
    )
    Server(config, app).run(sockets=sockets)



@app.command()
def server(host: HostOpt = "127.0.0.1", port: PortOpt = 8080) -> None:
    """Serve the API on the configured store (SQLite by default,
    APPORTION_DATABASE_URL for PostgreSQL)."""
    from apportion.logs import configure_logging
    from apportion.service.settings import Settings

    configure_logging()
    _private_files()
    _serve(Settings.from_env(), host, port)


def _claim_port(host: str, port: int) -> list[socket.socket]:
    """Listen on ``host:port`` before ``up`` writes anything, or exit with one
    line: a second ``up`` on a busy port used to write a token for its own new
    database into the CLI config, locking the CLI out of the running server.
    The sockets are held and served, so no other process can take the port
    between this check and the server's start."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        _fail(f"cannot listen on {host}:{port}: {exc.strerror}")
    claimed: list[socket.socket] = []
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        claimed.append(sock)
        try:
            # As uvicorn and asyncio do: a port left in TIME_WAIT by a server
            # that just stopped is free, one that a process listens on is not.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            # Listening now makes the port busy to a second `up` started
            # while this one still migrates its store.
            sock.listen(2048)
        except OSError as exc:
            for s in claimed:
                s.close()
            if exc.errno == errno.EADDRINUSE:
                _fail(f"port {port} on {host} is in use (is apportion already running? "
                      "'apportion nodes list' talks to it); nothing was started or changed")
            _fail(f"cannot listen on {host}:{port}: {exc.strerror}; nothing was started "
                  "or changed")
    return claimed


def _fail(line: str) -> NoReturn:
    """One plain line on stderr and exit 1, before anything was written."""
    sys.stderr.write(f"error: {line}\n")
    raise typer.Exit(1)


def _local_admin_token(settings: Settings, url: str) -> str:
    """Reuse the admin token in the CLI config when this store knows it,
    otherwise make one and write it there."""
    from apportion.service.auth import Authenticator
    from apportion.store.database import create_engine, migrate
    from apportion.store.tokens import find_token

    engine = create_engine(settings.url)
    migrate(engine)
    try:
        if settings.admin_token:
            Authenticator(engine).ensure("admin", "admin", settings.admin_token)
            write_config(url, settings.admin_token)
            return settings.admin_token
        known = read_config().get("token")
        if known:
            with engine.connect() as conn:
                record = find_token(conn, known)
            if record is not None and record.role == "admin":
                write_config(url, known)
                return str(known)
        token, _ = Authenticator(engine).create("local-admin", "admin")
        write_config(url, token)
        return token
    finally:
        engine.dispose()


_SECRET_ENV = ("APPORTION_TOKEN", "APPORTION_TOKEN_FILE", "APPORTION_ADMIN_TOKEN")


def _local_agent_token(settings: Settings, name: str) -> Path:
    """An ``agent`` token for this machine's node, kept in the data directory
    (reused while this store knows it); the file's path."""
    from apportion.service.auth import Authenticator
    from apportion.store.database import create_engine
    from apportion.store.tokens import find_token

    path = settings.data_dir / "agent.token"
    engine = create_engine(settings.url)
    try:
        if path.exists():
            known = path.read_text().strip()
            with engine.connect() as conn:
                record = find_token(conn, known)
            if record is not None and (record.role, record.name) == ("agent", name):
                path.chmod(0o600)
                return path
        token, _ = Authenticator(engine).create(name, "agent")
    finally:
        engine.dispose()
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    # Created 0600, never readable by others even for a moment: the agent
    # refuses a token file others can read.
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as fh:
        fh.write(token)
    tmp.replace(path)
    return path


def _die_with_parent() -> Callable[[], None]:
    """``preexec_fn`` that asks Linux to SIGTERM the child when ``up`` dies,
    however it dies (libc is loaded before the fork, not in the child)."""
    import ctypes
    import signal

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1

    def preexec() -> None:
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)

    return preexec


def _start_local_agent(url: str, token_file: Path, name: str,
                       data_dir: Path) -> subprocess.Popen[bytes]:
    """A real agent for this machine: it discovers what the machine has,
    registers it, and runs the tasks submitted here; it stops them when
    ``up`` stops. Its token goes by file (0600), never on its command line
    (public in /proc) nor in its environment."""
    command = [sys.executable, "-m", "apportion.cli.main", "agent", "--server", url,
               "--token-file", str(token_file), "--name", name, "--labels", "facility=local",
               "--work-dir", str(data_dir / "agent"), "--on-exit", "stop"]
    env = {k: v for k, v in os.environ.items() if k not in _SECRET_ENV}
    return subprocess.Popen(command, env=env, preexec_fn=_die_with_parent())


def _announce_when_up(url: str, token: str, name: str, data_dir: Path) -> None:
    """Wait for the agent to register this machine, then say what to try."""
    with Client(url, token) as client:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                client.get_node(name)
                break
            except (ClientError, OSError):
                time.sleep(0.1)
        else:
            err_console.print("[red]the local agent did not register this machine[/red]")
            return
    # The token itself is not printed: terminals and their scrollback are
    # logged and shared; `apportion token show` gives it to whoever asks.
    console.print(
        f"[green]apportion is up[/green] at {url}  (store: {data_dir}); node "
        f"[bold]{name}[/bold] registered by its agent.\n"
        "  try: apportion submit --cpu 1 --memory 512Mi --wait -- echo hello | "
        "apportion nodes list | apportion jobs list\n"
        f"  dashboard: {url}/  sign in with the token that 'apportion token show' prints, "
        "or open it signed in: apportion dashboard --open\n"
        f"  API: curl -H \"Authorization: Bearer $(apportion token show)\" {url}/api/v1/nodes\n"
        "  stop with Ctrl-C (jobs still running on this machine then fail)",
        markup=True, highlight=False, soft_wrap=True,
    )


GRACEFUL_S = 3
"""How long a stopping server waits for open requests."""
AGENT_STOP_S = 15
"""How long ``up`` waits for its agent to stop the tasks it runs."""


def _running_tasks(app: Any, node: str) -> int:
    """Tasks of jobs holding resources on ``node`` now, as this server knows."""
    from apportion.service.jobs.model import JOB_LABEL

    try:
        active = app.state.ctx.ledger.active().values()
    except AttributeError:  # stopped before the services were built
        return 0
    return sum(1 for a in active if a.node == node and JOB_LABEL in a.labels)


def _say_stopping(node: str) -> Callable[[Any, bool], None]:
    """What ``up`` prints when Ctrl-C (or SIGTERM) stops it: what it waits
    for, and that the work running here fails."""

    def say(app: Any, again: bool) -> None:
        if again:
            sys.stderr.write("stopping at once: the local agent kills its tasks\n")
            return
        tasks = _running_tasks(app, node)
        fate = (f"warning: {tasks} task(s) of running jobs on this machine are stopped, and "
                "those jobs fail" if tasks else "no job is running on this machine")
        sys.stderr.write(
            f"stopping apportion: waiting up to {GRACEFUL_S} s for open requests, then up to "
            f"{AGENT_STOP_S} s for the local agent to stop its tasks (Ctrl-C again stops at "
            f"once)\n{fate}\n")
        sys.stderr.flush()

    return say


@app.command()
def up(
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8080,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="where the SQLite file lives (APPORTION_DATA_DIR)"),
    ] = None,
) -> None:
    """Everything on this machine in one command: the server on the embedded
    SQLite store, a real agent that registers this machine and runs the work
    submitted to it, and an admin token in the CLI config so every other
    command just works."""
    sockets = _claim_port(host, port)
    from apportion.logs import configure_logging
    from apportion.service.settings import Settings

    configure_logging()
    _private_files()
    settings = Settings.from_env(data_dir=data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    url = f"http://{host}:{port}"
    token = _local_admin_token(settings, url)
    os.environ.setdefault("APPORTION_SERVER", url)
    name = socket.gethostname()
    agent = _start_local_agent(url, _local_agent_token(settings, name), name,
                               settings.data_dir)
    threading.Thread(
        target=_announce_when_up, args=(url, token, name, settings.data_dir), daemon=True
    ).start()
    try:
        _serve(settings, host, port, sockets, on_stop=_say_stopping(name))
    finally:
        agent.terminate()
        try:
            agent.wait(AGENT_STOP_S)
        except subprocess.TimeoutExpired:
            sys.stderr.write(f"the local agent did not stop within {AGENT_STOP_S} s: killed\n")
            agent.kill()
            agent.wait(5)
        sys.stderr.write("apportion is down\n")


if __name__ == "__main__":  # pragma: no cover
    app()
