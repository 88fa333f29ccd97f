"""The agent's poll and its batches of reports, served before the framework.

Every task an agent runs costs the server a share of one poll
(``GET /api/v1/agents/{node}/assignments``, the long-poll that delivers it)
and a share of one batch of reports (``POST /api/v1/agents/{node}/reports``,
its exit). Around those two routes FastAPI's layers (middleware, route
matching over every pattern, dependency solving, the answer's check) cost
more than the routes do (``bench/README.md``, h22-server and h23-e2e). As
for a submission (``fastsubmit.py``), the application's ``__call__`` hands
these two to ``serve_agent``, which does what the stack would have: the
edge's check, the request id, the access log, the same ``TaskReportsIn``,
the same ``apply_reports`` and ``desired_state`` the routes call, the answer
serialized as the route's, and an ``ApportionError`` answered as the
framework's handler answers it.

Only what is plainly valid is served here. A poll whose query is anything
but the agent's own ``after``, ``epoch`` and ``wait`` in their plain forms,
or that carries a body, is not taken at all (the normal way answers it); a
batch whose body does not validate goes on to the framework with its body
replayed. So the two paths differ in nothing a client can see
(``tests/server/test_fastagent.py`` compares their answers).
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import TypeAdapter
from starlette.types import Receive, Scope, Send

from apportion.exceptions import ApportionError
from apportion.server.edge import EdgeGuard, answer
from apportion.server.fastpath import Answer, read_body, serve_answer
from apportion.server.fastsubmit import ASGI, json_body, refusal, replay
from apportion.server.responses.agents import Reports
from apportion.server.routes.agents import apply_reports, desired_state
from apportion.server.schemas import TaskReportsIn

_PATH = re.compile(r"/api/v1/agents/([^/]+)/(assignments|reports)")
_OTHER_ROUTES = frozenset({"register", "checkpoints"})
"""First segments that other routes under ``/api/v1/agents`` spell out: such
a path is left to the framework's own matching."""
_METHOD = {"assignments": "GET", "reports": "POST"}

# The poll's query in the forms the agent writes (``client._query``), each
# value within the route's bounds (checked again below), so that the route's
# own parsing would read the same numbers.
_AFTER = re.compile(rb"-1|0|[1-9][0-9]{0,18}")
_WAIT = re.compile(rb"(0|[1-9][0-9]{0,2})(\.[0-9]{1,6})?")
_EPOCH = re.compile(rb"[0-9A-Za-z_-]{1,64}")
MAX_AFTER = 2**62
MAX_WAIT = 120.0
_BODY_HEADERS = (b"content-length", b"transfer-encoding")

_REPORTS: TypeAdapter[dict[str, Any]] = TypeAdapter(Reports)
"""The route's return type: FastAPI checks and serializes its answer with it."""

Poll = tuple[int, str | None, float]
"""A poll's ``after``, ``epoch`` and ``wait``."""


def agent_call(scope: Scope) -> tuple[str, Poll | None] | None:
    """The node of a poll (with its query) or of a batch of reports (None in
    its place) that this module serves; None for any other request."""
    if scope["type"] != "http":
        return None
    match = _PATH.fullmatch(scope["path"])
    if match is None:
        return None
    node, what = match.groups()
    if scope["method"] != _METHOD[what] or node in _OTHER_ROUTES:
        return None
    if what == "reports":
        return node, None
    poll = _poll(scope)
    return None if poll is None else (node, poll)


def _poll(scope: Scope) -> Poll | None:
    """The query as the route reads it, or None where it is not plain."""
    if any(key in _BODY_HEADERS for key, _ in scope["headers"]):
        return None  # a body: the edge's counting and the framework decide
    after, epoch, wait = -1, None, 0.0
    query: bytes = scope["query_string"]
    seen: set[bytes] = set()
    for pair in query.split(b"&") if query else ():
        key, equals, value = pair.partition(b"=")
        if not equals or key in seen:
            return None
        seen.add(key)
        if key == b"after" and _AFTER.fullmatch(value) and int(value) <= MAX_AFTER:
            after = int(value)
        elif key == b"wait" and _WAIT.fullmatch(value) and float(value) <= MAX_WAIT:
            wait = float(value)
        elif key == b"epoch" and _EPOCH.fullmatch(value):
            epoch = value.decode("ascii")
        else:
            return None
    return after, epoch, wait


async def serve_agent(app: Any, scope: Scope, receive: Receive, send: Send,
                      guard: EdgeGuard, framework: ASGI, node: str, poll: Poll | None, *,
                      access_log: bool = False) -> None:
    """Answer one poll (``poll`` given) or batch of reports on ``app``, or
    hand a batch whose body does not validate to ``framework``."""
    try:
        caller, limit = await guard.check(scope)
        raw = b"" if poll is not None else await read_body(receive, limit, cap=None)
    except ApportionError as exc:
        await answer(send, exc)  # as the edge answers: before the request id
        return
    body = None if poll is not None else json_body(scope, raw, TaskReportsIn)
    if caller is None or (poll is None and body is None):
        await framework(scope, replay(raw, receive) if poll is None else receive, send)
        return
    agents = app.state.ctx.agents

    async def produce() -> Answer:
        try:
            if poll is not None:
                after, epoch, wait = poll
                return 200, await desired_state(agents, caller, node, after, epoch, wait,
                                                receive), ()
            assert body is not None
            out = await apply_reports(agents, caller, node, body)
        except ApportionError as exc:
            return refusal(exc)
        return 200, _REPORTS.dump_json(_REPORTS.validate_python(out), by_alias=True), ()

    await serve_answer(scope, send, produce(), access_log=access_log)
