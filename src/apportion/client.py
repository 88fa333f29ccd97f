"""Typed HTTP client for the apportion API, used by the CLI and the agent.

Every call is defined once, as a ``Call`` (method, path, query, body, what
of the answer is returned) made by a method of ``Api``; a transport runs it.
``Client`` is the synchronous one, for the CLI: it speaks HTTP/1.1 with the
standard library's ``http.client`` over one kept-alive connection: every CLI
command starts a fresh process, and httpx alone took longer to import than a
whole ``apportion submit`` may take (``bench/bench_cli.py``; the test
``tests/cli/test_imports.py`` keeps heavy modules off this path).
``AsyncClient`` (``async_client.py``, over httpx) is the agent's.
"""

from __future__ import annotations

import json
import os
import select
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from http.client import HTTPConnection, HTTPException, HTTPResponse
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from urllib.parse import quote, urlencode, urlsplit

if TYPE_CHECKING:
    from apportion.protocol import TaskUpdate

DEFAULT_SERVER = "http://127.0.0.1:8080"


class TransportError(OSError):
    """The request did not get an answer (connection refused or lost, timeout,
    a broken reply). ``url`` is the server it was sent to, when known, so a
    message can say which server did not answer."""

    def __init__(self, message: str, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url


class ConnectError(TransportError):
    """The server could not be reached at all."""


class ClientError(Exception):
    """The server answered an error; ``body`` is its JSON (``message`` says why)."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.body = body
        super().__init__(body.get("message") or f"HTTP {status}")


def config_path() -> Path:
    if os.environ.get("APPORTION_CONFIG"):
        return Path(os.environ["APPORTION_CONFIG"])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "apportion" / "config.toml"


@dataclass(frozen=True)
class Connection:
    server: str
    token: str | None


def read_config() -> dict[str, Any]:
    path = config_path()
    if not path.exists():
        return {}
    import tomllib  # only when there is a file to read

    with path.open("rb") as fh:
        return tomllib.load(fh)


def write_config(server: str, token: str) -> Path:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    text = f"server = {_toml_str(server)}\ntoken = {_toml_str(token)}\n"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.chmod(0o600)
    tmp.replace(path)
    return path


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def resolve(server: str | None = None, token: str | None = None) -> Connection:
    """Flags first, then APPORTION_SERVER / APPORTION_TOKEN, then the config file."""
    cfg = read_config()
    return Connection(
        server or os.environ.get("APPORTION_SERVER") or cfg.get("server") or DEFAULT_SERVER,
        token or os.environ.get("APPORTION_TOKEN") or cfg.get("token"),
    )


R = TypeVar("R")

AGENTS = "/api/v1/agents"


def agent_path(node: str, suffix: str = "") -> str:
    """The agent protocol's path for ``node`` (``suffix`` starts with "/")."""
    return f"{AGENTS}/{node}{suffix}"


def checkpoint_path(task_id: str) -> str:
    """Where the node that resumes a task fetches its checkpoint."""
    return f"{AGENTS}/checkpoints/{task_id}"


@dataclass(frozen=True, slots=True)
class Call:
    """One request, as every transport sends it: the path, the query
    (``None`` values left out, booleans as true/false), a JSON body or raw
    bytes, and what of the answer is returned: its field ``pick``, read by
    ``read``."""

    method: str
    path: str
    params: Mapping[str, Any] | None = None
    json: Any = None
    content: bytes | None = None
    content_type: str | None = None
    pick: str | None = None
    read: Callable[[Any], Any] | None = None

    def target(self) -> str:
        return self.path + _query(self.params)

    def body(self) -> tuple[bytes | None, dict[str, str]]:
        """The bytes sent and their content type."""
        if self.content is not None:
            return self.content, {"Content-Type": self.content_type or "application/octet-stream"}
        if self.json is None:
            return None, {}
        data = json.dumps(self.json, ensure_ascii=False, separators=(",", ":")).encode()
        return data, {"Content-Type": "application/json"}

    def answer(self, status: int, body: bytes) -> Any:
        """The call's result from the server's answer; an error status raises."""
        if status >= 400:
            raise _error_of(status, body)
        out: Any = _json(body) if body else None
        if self.pick is not None:
            out = out[self.pick]
        return self.read(out) if self.read is not None else out


class Api(Generic[R]):
    """Every call of the REST API, defined once. ``Client`` runs them over
    ``http.client`` and returns their results; ``AsyncClient``
    (``async_client.py``, over httpx) returns awaitables of the same."""

    def _call(self, call: Call) -> R:
        raise NotImplementedError


    def healthz(self) -> R:
        return self._call(Call("GET", "/healthz"))

    def whoami(self) -> R:
        return self._call(Call("GET", "/api/v1/whoami"))

    def list_nodes(self, **filters: str | None) -> R:
        params = {k: v for k, v in filters.items() if v is not None}
        return self._call(Call("GET", "/api/v1/nodes", params=params, pick="nodes"))

    def get_node(self, name: str) -> R:
        return self._call(Call("GET", f"/api/v1/nodes/{name}"))

    def register_node(self, body: dict[str, Any]) -> R:
        return self._call(Call("POST", "/api/v1/nodes", json=body))

    def update_node(self, name: str, body: dict[str, Any]) -> R:
        return self._call(Call("PUT", f"/api/v1/nodes/{name}", json=body))

    def delete_node(self, name: str, *, force: bool = False) -> R:
        return self._call(Call(
            "DELETE", f"/api/v1/nodes/{name}", params={"force": "true" if force else "false"}
        ))

    def allocate(
        self,
        resources: dict[str, Any],
        *,
        node: str | None = None,
        owner: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> R:
        body: dict[str, Any] = {"resources": resources, "labels": labels or {}}
        if node:
            body["node"] = node
        if owner:
            body["owner"] = owner
        return self._call(Call("POST", "/api/v1/allocations", json=body))

    def release(self, alloc_id: str, reason: str | None = None, *, force: bool = False) -> R:
        params: dict[str, str] = {"reason": reason} if reason else {}
        if force:
            params["force"] = "true"
        return self._call(Call("DELETE", f"/api/v1/allocations/{alloc_id}", params=params))

    def fragmentation(self) -> R:
        return self._call(Call("GET", "/api/v1/capacity/fragmentation"))

    def cluster(self) -> R:
        return self._call(Call("GET", "/api/v1/cluster"))

    def get_allocation(self, alloc_id: str) -> R:
        return self._call(Call("GET", f"/api/v1/allocations/{alloc_id}"))

    def list_allocations(self, **filters: Any) -> R:
        params = {k: v for k, v in filters.items() if v is not None}
        return self._call(Call("GET", "/api/v1/allocations", params=params, pick="allocations"))

    def capacity(self, group_by: str = "resource") -> R:
        return self._call(Call("GET", "/api/v1/capacity/summary", params={"group_by": group_by}))

    def utilization(self, group_by: str = "resource", window_seconds: float = 3600.0) -> R:
        return self._call(Call("GET", "/api/v1/capacity/utilization",
                            params={"group_by": group_by, "window_seconds": window_seconds}))

    def forecast(self, *, days: float = 7.0, group_by: str = "resource",
                 history_days: float | None = None, group: str | None = None,
                 resource: str | None = None, points: bool = True) -> R:
        params: dict[str, Any] = {"days": days, "group_by": group_by,
                                  "points": "true" if points else "false"}
        for key, value in (("history_days", history_days), ("group", group),
                           ("resource", resource)):
            if value is not None:
                params[key] = value
        return self._call(Call("GET", "/api/v1/capacity/forecast", params=params))

    def prediction(self, name: str, *, user: str | None = None, command: str | None = None,
                   **requested: Any) -> R:
        params = {k: v for k, v in (("user", user), ("command", command), *requested.items())
                  if v is not None}
        return self._call(Call("GET", f"/api/v1/predictions/{quote(name, safe='')}",
                            params=params))

    def create_token(self, name: str, role: str) -> R:
        return self._call(Call("POST", "/api/v1/tokens", json={"name": name, "role": role}))

    def list_tokens(self) -> R:
        return self._call(Call("GET", "/api/v1/tokens", pick="tokens"))

    def revoke_token(self, name: str) -> R:
        return self._call(Call("DELETE", f"/api/v1/tokens/{name}"))

    def create_login_code(self) -> R:
        """A one-time code that signs the dashboard in as this token's owner."""
        return self._call(Call("POST", "/api/v1/auth/codes"))

    def create_session(self, code: str) -> R:
        """Exchange a one-time code for a dashboard session token."""
        return self._call(Call("POST", "/api/v1/auth/session", json={"code": code}))

    def submit_job(self, body: dict[str, Any]) -> R:
        return self._call(Call("POST", "/api/v1/jobs", json=body))

    def list_jobs(self, **filters: Any) -> R:
        params = {k: v for k, v in filters.items() if v is not None}
        return self._call(Call("GET", "/api/v1/jobs", params=params, pick="jobs"))

    def get_job(self, job_id: str) -> R:
        return self._call(Call("GET", f"/api/v1/jobs/{job_id}"))

    def explain_job(self, job_id: str, *, nodes: bool = False, nodes_limit: int | None = None) -> R:
        return self._call(Call("GET", f"/api/v1/jobs/{job_id}/explain",
                               params={"nodes": nodes or None, "nodes_limit": nodes_limit}))

    def cancel_job(self, job_id: str) -> R:
        return self._call(Call("POST", f"/api/v1/jobs/{job_id}/cancel"))

    def list_queues(self) -> R:
        return self._call(Call("GET", "/api/v1/queues", pick="queues"))

    def put_queue(self, body: dict[str, Any], *, create: bool) -> R:
        return self._call(Call("POST" if create else "PUT", "/api/v1/queues", json=body))

    # -- agents, node operations and logs ----------------------------------

    def job_logs(self, job_id: str, *, task: str | None = None, stream: str = "stdout",
                 offset: int = 0, attempt: int | None = None) -> R:
        params: dict[str, Any] = {"stream": stream, "offset": offset, "attempt": attempt}
        if task is not None:
            params["task"] = task
        return self._call(Call("GET", f"/api/v1/jobs/{job_id}/logs", params=params))

    def drain_node(self, name: str, deadline: str | None = None) -> R:
        body = {"deadline": deadline} if deadline is not None else {}
        return self._call(Call("POST", f"/api/v1/nodes/{name}/drain", json=body))

    def cordon_node(self, name: str) -> R:
        return self._call(Call("POST", f"/api/v1/nodes/{name}/cordon"))

    def uncordon_node(self, name: str) -> R:
        return self._call(Call("POST", f"/api/v1/nodes/{name}/uncordon"))

    def rescan_node(self, name: str) -> R:
        return self._call(Call("POST", f"/api/v1/nodes/{name}/rescan"))

    def agent_status(self, name: str) -> R:
        return self._call(Call("GET", f"/api/v1/agents/{name}"))

    def alerts(self, *, state: str | None = None, severity: str | None = None) -> R:
        params = {k: v for k, v in (("state", state), ("severity", severity)) if v}
        return self._call(Call("GET", "/api/v1/alerts", params=params, pick="alerts"))

    def health_checks(self) -> R:
        return self._call(Call("GET", "/api/v1/health-checks", pick="nodes"))


    def history(self, metric: str, *, window_seconds: float = 3600.0, step: float | None = None,
                **labels: str | None) -> R:
        params: dict[str, Any] = {"metric": metric, "window_seconds": window_seconds}
        if step is not None:
            params["step"] = step
        params.update({k: v for k, v in labels.items() if v is not None})
        return self._call(Call("GET", "/api/v1/history", params=params))

    # -- the agent protocol ------------------------------------------------------

    def register_agent(self, node: Mapping[str, Any], agent: Mapping[str, Any]) -> R:
        """Register (or refresh) a node; with a join token the answer carries
        ``agent_token``, the node's credential from then on."""
        return self._call(Call("POST", f"{AGENTS}/register",
                               json={"node": node, "agent": agent}))

    def agent_heartbeat(self, node: str, agent_id: str, usage: Mapping[str, Any],
                        tasks: list[dict[str, Any]]) -> R:
        return self._call(Call("POST", agent_path(node, "/heartbeat"),
                               json={"agent_id": agent_id, "usage": usage, "tasks": tasks}))

    def agent_assignments(self, node: str, *, after: int, wait: float,
                          epoch: str | None = None) -> R:
        """The node's desired state (a ``DesiredState``) once it is newer than
        ``after``, held up to ``wait`` seconds."""
        # The agent's alone: a CLI command never loads the wire models.
        from apportion.protocol import DesiredState

        return self._call(Call("GET", agent_path(node, "/assignments"),
                               params={"after": after, "wait": wait, "epoch": epoch},
                               read=DesiredState.from_wire))

    def report_task(self, node: str, task_id: str, update: TaskUpdate) -> R:
        return self._call(Call("POST", agent_path(node, f"/tasks/{task_id}/report"),
                               json=update.to_wire()))

    def report_tasks(self, node: str, updates: Mapping[str, TaskUpdate]) -> R:
        """Several tasks' reports in one call; the answers, in order."""
        reports = [{"task": task_id, **u.to_wire()} for task_id, u in updates.items()]
        return self._call(Call("POST", agent_path(node, "/reports"),
                               json={"reports": reports}, pick="answers"))

    def push_log(self, node: str, task_id: str, stream: str, offset: int, data: bytes) -> R:
        """Log bytes of a task's ``stream`` from ``offset``."""
        return self._call(Call("POST", agent_path(node, f"/tasks/{task_id}/logs/{stream}"),
                               params={"offset": offset}, content=data))


class Client(Api[Any]):
    """Thin, typed calls onto the REST API; every method returns parsed JSON."""

    def __init__(self, server: str, token: str | None, *, timeout: float = 30.0) -> None:
        self._http = _Http(server, token, timeout)

    @classmethod
    def from_env(cls, server: str | None = None, token: str | None = None) -> Client:
        conn = resolve(server, token)
        return cls(conn.server, conn.token)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, call: Call) -> Any:
        status, body = self._http.request(call)
        return call.answer(status, body)

    def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                json: Any = None) -> Any:
        return self._call(Call(method, path, params, json))

    # -- observability -------------------------------------------------------

    def metrics(self) -> str:
        """The Prometheus text of ``GET /metrics``."""
        status, body = self._http.request(Call("GET", "/metrics"))
        if status >= 400:
            raise _error_of(status, body)
        return body.decode()

    def events(self, *, after: int | None = None, tail: int | None = None,
               kinds: str | None = None, follow: bool = True,
               reconnect: bool = True) -> Iterator[dict[str, Any]]:
        """Events from ``GET /api/v1/events`` as dicts, in order. Following,
        a dropped connection is resumed from the last event seen; a server
        never reached is an error at once, not a silent wait."""
        last = after
        delay = 0.5
        answered = False
        while True:
            params: dict[str, Any] = {"follow": "true" if follow else "false"}
            if kinds:
                params["kind"] = kinds
            if tail is not None and last is None:
                params["tail"] = tail
            headers = {"Last-Event-ID": str(last)} if last is not None else {}
            try:
                response = self._http.stream(Call("GET", "/api/v1/events", params), headers)
                try:
                    if response.status >= 400:
                        raise _error_of(response.status, response.read())
                    answered = True
                    delay = 0.5
                    for event in _sse_events(_lines(response)):
                        last = int(event["id"])
                        yield event
                finally:
                    response.close()
                    self._http.close()
                if not follow:
                    return
            except (OSError, HTTPException):
                if not (follow and reconnect and answered):
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def _json(body: bytes) -> Any:
    return json.loads(body)


def _error_of(status: int, body: bytes) -> ClientError:
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = {"message": body.decode(errors="replace") or f"HTTP {status}"}
    if not isinstance(parsed, dict):
        parsed = {"message": str(parsed)}
    return ClientError(status, parsed)


def _lines(response: HTTPResponse) -> Iterator[str]:
    """A streamed body's lines, without their line ends, as they arrive."""
    while True:
        raw = response.readline()
        if not raw:
            return
        yield raw.decode().rstrip("\r\n")


def _query(params: Mapping[str, Any] | None) -> str:
    if not params:
        return ""
    pairs = [(k, ("true" if v else "false") if isinstance(v, bool) else v)
             for k, v in params.items() if v is not None]
    return "?" + urlencode(pairs) if pairs else ""


class _Http:
    """One kept-alive HTTP/1.1 connection to the server (reopened when the
    server has closed it between requests)."""

    def __init__(self, server: str, token: str | None, timeout: float) -> None:
        self._url = server.rstrip("/")
        url = urlsplit(self._url)
        self._https = url.scheme == "https"
        self._host = url.hostname or "127.0.0.1"
        self._port = url.port
        self._prefix = url.path
        self._timeout = timeout
        self._headers = {"Accept": "*/*", "User-Agent": "apportion-cli"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._conn: HTTPConnection | None = None

    def _connection(self) -> HTTPConnection:
        conn = self._conn
        if conn is not None and conn.sock is not None and _closed_by_peer(conn.sock):
            self.close()
            conn = None
        if conn is None:
            if self._https:
                from http.client import HTTPSConnection

                conn = HTTPSConnection(self._host, self._port, timeout=self._timeout)
            else:
                conn = HTTPConnection(self._host, self._port, timeout=self._timeout)
            conn._create_connection = _connect  # type: ignore[attr-defined]
            try:
                conn.connect()
            except OSError as exc:
                raise ConnectError(str(exc) or type(exc).__name__, self._url) from exc
            self._conn = conn
        return conn

    def _send(self, call: Call, headers: Mapping[str, str] | None = None) -> HTTPResponse:
        conn = self._connection()
        data, content_headers = call.body()
        all_headers = {**self._headers, **content_headers, **(headers or {})}
        try:
            conn.request(call.method, self._prefix + call.target(), data, all_headers)
            return conn.getresponse()
        except ConnectError:
            raise
        except (OSError, HTTPException) as exc:
            self.close()
            raise TransportError(str(exc) or type(exc).__name__, self._url) from exc

    def request(self, call: Call) -> tuple[int, bytes]:
        response = self._send(call)
        try:
            data = response.read()
        except (OSError, HTTPException) as exc:
            self.close()
            raise TransportError(str(exc) or type(exc).__name__, self._url) from exc
        if response.will_close:
            self.close()
        return response.status, data

    def stream(self, call: Call, headers: Mapping[str, str]) -> HTTPResponse:
        """A response whose body is read as it arrives, with no read timeout."""
        response = self._send(call, headers)
        if self._conn is not None and self._conn.sock is not None:
            self._conn.sock.settimeout(None)
        return response

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _connect(address: tuple[str, int], *args: Any) -> socket.socket:
    """``socket.create_connection`` (which ``http.client`` connects with),
    with an ASCII host name given as bytes: as a string it goes through the
    IDNA codec, whose first use imports ``stringprep`` and ``unicodedata``
    (a few milliseconds of a short command, ``bench/bench_cli.py``)."""
    host, port = address
    name: Any = host.encode() if host.isascii() else host  # getaddrinfo takes bytes too
    return socket.create_connection((name, port), *args)


def _closed_by_peer(sock: Any) -> bool:
    """Whether a kept-alive connection was closed by the server while idle
    (readable with nothing to read); sending on it would fail."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def _sse_events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """Parse server-sent events; yields each message's JSON ``data``."""
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield json.loads("\n".join(data))
                data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
