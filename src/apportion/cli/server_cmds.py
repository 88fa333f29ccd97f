"""``apportion server`` and ``apportion up``: the commands that run a
server (and, for ``up``, an agent) in this process."""

from __future__ import annotations

import errno
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from apportion.cli.output import console, err_console
from apportion.client import Client, ClientError, read_config, write_config

if TYPE_CHECKING:
    import subprocess

    # The server stack (SQLAlchemy, Alembic, uvicorn) is imported by the
    # commands that run a server, not when this module is (0.5 s).
    from apportion.service.settings import Settings

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
    import subprocess

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
    import subprocess
    import threading

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


def register(app: typer.Typer) -> None:
    """Add ``server`` and ``up`` to the ``apportion`` command."""
    app.command("server")(server)
    app.command("up")(up)
