"""The job submission, served before the framework sees it.

``POST /api/v1/jobs`` is one request per job, and in the e2e bench (thousands
of short jobs) FastAPI's middleware layers, route matching, dependency
solving and response checking cost about three times what the route itself
does (``bench/README.md``, h22-server). As for a grant (``fastpath.py``), the
application's ``__call__`` hands this method and path to ``serve_submit``,
which does what the stack would have: the edge's check (authentication, the
body's limit), the request id, the access log, the same ``JobIn`` model, the
same ``submit_job`` the route calls, the answer serialized as the route's
return type is, and an ``ApportionError`` answered as the framework's handler
answers it.

Only a body that validates is served here: one that is not JSON, has a
content type the framework would not read as JSON, or fails ``JobIn`` goes
on to the framework (its body replayed), which answers it with its own
messages. So the two paths differ in nothing a client can see
(``tests/server/test_fastsubmit.py`` compares their answers).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.responses import JSONResponse
from starlette.types import Message, Receive, Scope, Send

from apportion.exceptions import ApportionError
from apportion.server.edge import EdgeGuard, answer
from apportion.server.errors import http_headers, http_status
from apportion.server.fastpath import Answer, parse_json, read_body, serve_answer
from apportion.server.responses.jobs import JobDetail
from apportion.server.routes.jobs import submit_job
from apportion.server.schemas import JobIn

PATH = "/api/v1/jobs"
RELABELED = (b"application/x-www-form-urlencoded", b"text/plain")
"""Content types read as JSON all the same (``app.BodiesAreJson``)."""
ASGI = Callable[[Scope, Receive, Send], Awaitable[None]]
Body = TypeVar("Body", bound=BaseModel)

_DETAIL: TypeAdapter[dict[str, Any]] = TypeAdapter(JobDetail)
"""The route's return type: FastAPI checks and serializes its answer with it."""


def is_submit(scope: Scope) -> bool:
    return bool(scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == PATH)


async def serve_submit(app: Any, scope: Scope, receive: Receive, send: Send, guard: EdgeGuard,
                       framework: ASGI, *, access_log: bool = False) -> None:
    """Answer one submission on ``app``, or hand it to ``framework`` (the
    application's own stack) when its body does not validate."""
    try:
        caller, limit = await guard.check(scope)
        raw = await read_body(receive, limit, cap=None)
    except ApportionError as exc:
        await answer(send, exc)  # as the edge answers: before the request id
        return
    body = json_body(scope, raw, JobIn)
    if body is None or caller is None:
        await framework(scope, replay(raw, receive), send)
        return

    async def produce() -> Answer:
        try:
            out = await submit_job(app.state.ctx, caller, body)
        except ApportionError as exc:
            return refusal(exc)
        value = _DETAIL.validate_python(out, from_attributes=True)
        return 201, _DETAIL.dump_json(value, by_alias=True), ()

    await serve_answer(scope, send, produce(), access_log=access_log)


def refusal(exc: ApportionError) -> Answer:
    """A route's ``ApportionError``, answered as errors.install's handler answers it."""
    refused = JSONResponse(exc.to_dict(), status_code=http_status(exc))
    return refused.status_code, bytes(refused.body), [
        (k.lower().encode("latin-1"), v.encode("latin-1"))
        for k, v in http_headers(exc).items()]


def json_body(scope: Scope, raw: bytes, model: type[Body]) -> Body | None:
    """The body as the route would get it (a ``model``), or None where the
    framework would answer something else (it is then asked)."""
    for key, value in scope["headers"]:
        if key == b"content-type":
            kind = value.lower()
            if not (kind.partition(b";")[0].strip() == b"application/json"
                    or kind.startswith(RELABELED)):
                return None
            break
    if not raw:
        return None
    try:
        # The grant's reader: what the stdlib decoder, as the framework uses, reads.
        return model.model_validate(parse_json(raw), from_attributes=True)
    except (ValueError, ValidationError):
        return None


def replay(raw: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the body already read, then what follows it."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": raw, "more_body": False}

    return replay
