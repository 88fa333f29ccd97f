"""Helpers for tests that run real servers and real databases on loopback."""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PG_ADMIN_URL = os.environ.get("APPORTION_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
"""Parameters of a fixture that gives each backend in turn."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def need_service(name: str, reason: str) -> None:
    """Skip with a visible reason, except in CI, where a missing service fails."""
    message = f"{name} is not reachable: {reason}"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: this test must run in CI)")
    pytest.skip(message)


def compiled(name: str, what: str, fallback: str) -> ModuleType:
    """The compiled module ``name`` (``what``, its source, for the message);
    where it was not built, the calling test module skips, saying so (or
    that ``APPORTION_NO_NATIVE=1`` hides it, ``tests/conftest.py``), except
    in CI, where a missing build fails: CI tests what is shipped."""
    hidden = os.environ.get("APPORTION_NO_NATIVE") == "1"
    try:
        return importlib.import_module(name)
    except ImportError:
        if IN_CI and not hidden:
            raise  # the build failed
        pytest.skip(f"{what}: not built" + (" (APPORTION_NO_NATIVE=1)" if hidden else
                    f": no C compiler or Cython at install; {fallback} in use"),
                    allow_module_level=True)


def postgres_database() -> tuple[str, str]:
    """Create a fresh database; return (url, name)."""
    import psycopg

    name = f"apportion_test_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        need_service("PostgreSQL", str(exc).strip().splitlines()[0])
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    return f"{base}/{name}", name


def drop_postgres_database(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def wait_until(what: str, check: Callable[[], Any], timeout: float = 30.0,
                     every: float = 0.01) -> Any:
    """``e2e.cluster.wait_for`` inside an event loop: poll ``check`` (letting
    the loop run between polls) until it returns something true; fail naming
    ``what``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        await asyncio.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def cancel_later(task: asyncio.Task[Any], turns: int, accepted: list[bool]) -> None:
    """Cancel ``task`` after ``turns`` callbacks chained through the running
    loop's ready queue (finer than ``sleep(0)``, which runs a whole turn);
    whether the cancel was accepted goes into ``accepted``."""
    if turns:
        asyncio.get_running_loop().call_soon(cancel_later, task, turns - 1, accepted)
    else:
        accepted.append(task.cancel())


class Clock:
    """A clock the test moves by hand: services take it instead of time.time."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class ServerProcess:
    """``apportion server`` as a real process on a loopback port."""

    data_dir: Path
    database_url: str | None = None
    token: str = field(default_factory=lambda: "test-admin-" + uuid.uuid4().hex)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def start(self, timeout: float = 90.0) -> ServerProcess:
        """Start the server and wait until it answers as this one.

        ``free_port`` gives a port nobody listens on yet, and two workers
        can be given the same one before either binds it: the server that
        loses exits ("address already in use"), but until it does, the
        other one answers its /healthz (and refuses its token: "unknown
        token"). So the answer must take this server's token, and a server
        that lost the port starts again on another."""
        for _ in range(3):
            if self._launch(timeout):
                return self
            self.port = free_port()
        raise RuntimeError(f"server could not bind a port; see {self._log_path()}")

    def _log_path(self) -> Path:
        return self.data_dir / f"server-{self.port}.log"

    def _launch(self, timeout: float) -> bool:
        """Start on ``self.port``; False where another process holds it."""
        env = dict(os.environ)
        env.update(
            {
                "APPORTION_DATA_DIR": str(self.data_dir),
                "APPORTION_ADMIN_TOKEN": self.token,
                "APPORTION_LOG_LEVEL": "WARNING",
                **self.extra_env,
            }
        )
        if self.database_url:
            env["APPORTION_DATABASE_URL"] = self.database_url
        log = open(self._log_path(), "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "apportion.cli.main", "server", "--port", str(self.port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                text = Path(log.name).read_text()
                if "address already in use" in text.lower():
                    return False
                raise RuntimeError(f"server exited early; see {log.name}:\n" + text[-3000:])
            try:
                if (httpx.get(self.url + "/healthz", timeout=1).status_code == 200
                        and httpx.get(self.url + "/api/v1/nodes", headers=self.headers,
                                      timeout=5).status_code == 200):
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server did not answer /healthz within {timeout}s")

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill9()

    def client(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            timeout=30,
            headers={"Authorization": f"Bearer {token or self.token}"},
        )


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int | None = None
    """What the receiver answers; None for a request it held (``HOLD``)."""

    def json(self) -> Any:
        import json

        return json.loads(self.body)

    @property
    def event(self) -> str:
        return str(self.json()["event"])

    @property
    def attempt(self) -> int:
        return int(self.headers["x-apportion-delivery-attempt"])


HOLD = -1
"""In ``WebhookReceiver.answers``: keep the request open until ``release()``."""


class WebhookReceiver:
    """A real HTTP server on loopback that records every POST. ``answers``
    gives the status codes of the first requests (``HOLD`` keeps one open
    until ``release()``: a receiver that hangs), then every request gets
    ``otherwise``."""

    def __init__(self, answers: list[int] | None = None) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.received: list[Received] = []
        self.answers = list(answers or [])
        self.otherwise = 200
        self._lock = threading.Lock()
        self._released = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                seen = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                with receiver._lock:
                    receiver.received.append(seen)
                    status = receiver.answers.pop(0) if receiver.answers else receiver.otherwise
                    if status != HOLD:
                        seen.status = status
                if status == HOLD:
                    receiver._released.wait(60)
                    return  # the client went away meanwhile, or it times out
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def requests(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def bodies(self) -> list[Any]:
        return [r.json() for r in self.requests()]

    def release(self) -> None:
        """Let held requests end (without an answer)."""
        self._released.set()

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()
