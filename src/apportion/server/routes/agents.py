"""The agent protocol (/api/v1/agents, tagged ``agents`` in the schema) and
the node and job operations built on it (rescan, drain, cordon, logs).

Agents receive work by long-polling ``GET /api/v1/agents/{node}/assignments``
(see docs/agents.md for why): the answer is the node's whole desired state.
Everything an agent sends (register, heartbeat, task reports, log bytes,
checkpoints) is idempotent, so an agent retries until it is answered.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.types import Receive

from apportion.core.model import NodeState
from apportion.core.records import TaskRow
from apportion.exceptions import ApportionError, BodyTooLarge, NotFound
from apportion.server.context import AppContext, Caller, Ctx
from apportion.server.convert import node_from
from apportion.server.errors import http_status
from apportion.server.responses import AUTHED, BODY, errors
from apportion.server.responses.agents import (
    Agent,
    Checkpoint,
    DesiredStateOut,
    Heartbeat,
    LogChunk,
    Registered,
    Reports,
    TaskAnswer,
)
from apportion.server.responses.jobs import JobLogs
from apportion.server.responses.nodes import Node, NodeDrained, Rescan
from apportion.server.schemas import (
    AgentRegisterIn,
    DrainIn,
    HeartbeatIn,
    TaskReportIn,
    TaskReportsIn,
    iso,
    render_node,
)
from apportion.service.agents_service import AgentsService
from apportion.service.auth import Principal, Role
from apportion.service.job_specs import parse_duration
from apportion.service.jobs import ACTIVE_TASK, TaskReport
from apportion.service.join_tokens import is_join_token
from apportion.service.task_files import MAX_LOG_CHUNK, TaskFiles

router = APIRouter(prefix="/api/v1/agents", tags=["agents"])
public = APIRouter(prefix="/api/v1")


class TarResponse(StreamingResponse):
    media_type = "application/x-tar"


def _agents(request: Request) -> AgentsService:
    service: AgentsService = request.app.state.ctx.agents
    return service


def _files(request: Request) -> TaskFiles:
    files: TaskFiles = request.app.state.ctx.files
    return files


def _node_body(ctx: AppContext, name: str) -> dict[str, Any]:
    ledger = ctx.ledger
    return render_node(ledger.node(name), ledger.allocated(name))


# -- the agent protocol --------------------------------------------------------------


@router.post("/register", responses=errors(*AUTHED, *BODY, 403, 409))
async def register(request: Request, ctx: Ctx, body: AgentRegisterIn) -> Registered:
    """Register (or refresh) a node. With a one-time join token (a node a
    provider made for a pool) the token is spent, the node joins its pool,
    and the answer carries ``agent_token``, the node's credential from now on."""
    header = request.headers.get("authorization")
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() == "bearer" and is_join_token(token.strip()):
        joined = await _agents(request).join(token.strip(), node_from(body.node),
                                             body.agent.model_dump())
        return {"node": _node_body(ctx, joined.node.name), "epoch": _agents(request).epoch,
                "pool": joined.pool, "agent_token": joined.agent_token}
    caller = await ctx.auth.authenticate(header)
    caller.may_manage_node(body.node.name)
    agents = _agents(request)
    node = await agents.register(node_from(body.node), body.agent.model_dump())
    return {"node": _node_body(ctx, node.name), "epoch": agents.epoch}


@router.post("/{node}/heartbeat", responses=errors(*AUTHED, *BODY, 403, 404))
async def heartbeat(request: Request, ctx: Ctx, caller: Caller, node: str,
                    body: HeartbeatIn) -> Heartbeat:
    caller.may_manage_node(node)
    return await _agents(request).heartbeat(node, body.agent_id, dict(body.usage),
                                            [dict(t) for t in body.tasks])


@router.get("/{node}/assignments", response_model=None, responses={
    200: {"model": DesiredStateOut, "description": "the node's desired state"},
    **errors(*AUTHED, 403, 404, 409, 422)})
async def assignments(
    request: Request, caller: Caller, node: str,
    after: Annotated[int, Query(ge=-1, le=2**62)] = -1,
    epoch: Annotated[str | None, Query(max_length=64)] = None,
    wait: Annotated[float, Query(ge=0, le=120)] = 0,
) -> Response:
    # Served by ``server/fastagent.py`` in the running server for a plain
    # query; this route answers every other one.
    state = await desired_state(_agents(request), caller, node, after, epoch, wait,
                                request.receive)
    return Response(state, media_type="application/json")


async def desired_state(agents: AgentsService, caller: Principal, node: str, after: int,
                        epoch: str | None, wait: float, receive: Receive) -> bytes:
    """The one implementation of a poll (the route above and the fast path in
    ``server/fastagent.py`` both call it): the answer's JSON body."""
    caller.may_manage_node(node)

    async def hung_up() -> None:
        # A held poll ends as soon as its agent goes away, so a stopping
        # server does not wait for polls no one will read.
        while (await receive())["type"] != "http.disconnect":
            pass

    state = await agents.assignments(node, after=after, epoch=epoch, wait=wait, gone=hung_up)
    # Straight to bytes: this answer is on the path of every task start.
    return orjson.dumps(state.to_wire())


@router.post("/{node}/tasks/{task_id}/report",
             responses=errors(*AUTHED, *BODY, 403, 404, 409))
async def report(request: Request, ctx: Ctx, caller: Caller, node: str, task_id: str,
                 body: TaskReportIn) -> TaskAnswer:
    caller.may_manage_node(node)
    return await _agents(request).report(node, task_id, _report(body),
                                         checkpoint_saved=body.checkpoint)


@router.post("/{node}/reports", responses=errors(*AUTHED, *BODY, 403, 404, 409))
async def reports(request: Request, caller: Caller, node: str,
                  body: TaskReportsIn) -> Reports:
    """Several of the node's task reports in one call, answered in order; they
    commit together. A refused one is answered with its error body and
    ``status`` (what its own call would have answered)."""
    # Served by ``server/fastagent.py`` in the running server for a body that
    # validates; this route answers every other one.
    return await apply_reports(_agents(request), caller, node, body)


async def apply_reports(agents: AgentsService, caller: Principal, node: str,
                        body: TaskReportsIn) -> dict[str, Any]:
    """The one implementation of a batch of reports (the route above and the
    fast path in ``server/fastagent.py`` both call it)."""
    caller.may_manage_node(node)
    answers = await agents.reports(
        node, [(item.task, _report(item), item.checkpoint) for item in body.reports])
    return {"answers": [{"task": item.task, **(
        {**answer.to_dict(), "status": http_status(answer)}
        if isinstance(answer, ApportionError) else answer)}
        for item, answer in zip(body.reports, answers, strict=True)]}


def _report(body: TaskReportIn) -> TaskReport:
    return TaskReport(body.state, body.exit_code, body.signalled, body.memory_exceeded,
                      body.lost, body.reason, None, dict(body.times), dict(body.usage))


@router.post("/{node}/tasks/{task_id}/logs/{stream}",
             responses=errors(*AUTHED, 403, 404, 413, 422))
async def push_log(request: Request, caller: Caller, node: str, task_id: str, stream: str,
                   offset: Annotated[int, Query(ge=0, le=2**62)] = 0) -> LogChunk:
    caller.may_manage_node(node)
    data = await request.body()
    if len(data) > MAX_LOG_CHUNK:
        raise BodyTooLarge(f"a log chunk is at most {MAX_LOG_CHUNK} bytes", limit=MAX_LOG_CHUNK)
    return await _files(request).append_log(node, task_id, stream, offset, data)


@router.put("/{node}/tasks/{task_id}/checkpoint",
            responses=errors(*AUTHED, 403, 404, 413, 422))
async def put_checkpoint(request: Request, caller: Caller, node: str,
                         task_id: str) -> Checkpoint:
    caller.may_manage_node(node)
    name, size = await _files(request).save_checkpoint(node, task_id, request.stream())
    return {"checkpoint": name, "size": size}


@router.get("/checkpoints/{task_id}", response_class=TarResponse, responses={
    200: {"description": "the checkpoint, a tar archive"},
    **errors(*AUTHED, 403, 404, 422, json_only=True)})
async def get_checkpoint(request: Request, caller: Caller, task_id: str) -> StreamingResponse:
    """A checkpoint, for the node whose task resumes from it (or an admin)."""
    caller.require(Role.ADMIN, Role.AGENT)
    node = None if caller.role is Role.ADMIN else caller.name
    parts = await _files(request).checkpoint_for(node, task_id)
    return TarResponse(parts)


@router.get("/{node}", responses=errors(*AUTHED, 404, 409, 422))
async def describe(request: Request, _: Caller, node: str) -> Agent:
    return _agents(request).describe(node)


# -- node operations -------------------------------------------------------------------


@public.post("/nodes/{name}/rescan", tags=["nodes"],
             responses=errors(*AUTHED, 403, 404, 409, 422))
async def rescan(request: Request, caller: Caller, name: str) -> Rescan:
    """Ask the node's agent to discover its hardware again now."""
    caller.may_manage_node(name)
    return {"node": name, "rescan": await _agents(request).rescan(name)}


@public.post("/nodes/{name}/drain", tags=["nodes"],
             responses=errors(*AUTHED, *BODY, 403, 404, 409))
async def drain(request: Request, ctx: Ctx, caller: Caller, name: str,
                body: DrainIn | None = None) -> NodeDrained:
    """No new work on the node; running tasks finish, or are preempted and
    requeued elsewhere once the deadline has passed."""
    caller.require(Role.ADMIN)
    deadline = parse_duration(body.deadline, "deadline") if body is not None else None
    await _agents(request).drain(name, deadline)
    out = _node_body(ctx, name)
    out["running_tasks"] = len(ctx.jobs.tasks_on(name))
    return out


@public.post("/nodes/{name}/cordon", tags=["nodes"],
             responses=errors(*AUTHED, 403, 404, 409, 422))
async def cordon(request: Request, ctx: Ctx, caller: Caller, name: str) -> Node:
    """No new work on the node; what runs keeps running."""
    caller.require(Role.ADMIN)
    await _agents(request).set_state(name, NodeState.CORDONED)
    return _node_body(ctx, name)


@public.post("/nodes/{name}/uncordon", tags=["nodes"],
             responses=errors(*AUTHED, 403, 404, 409, 422))
async def uncordon(request: Request, ctx: Ctx, caller: Caller, name: str) -> Node:
    """Let the node take work again."""
    caller.require(Role.ADMIN)
    await _agents(request).set_state(name, NodeState.READY)
    return _node_body(ctx, name)


# -- job logs --------------------------------------------------------------------------


def _pick_task(tasks: list[TaskRow], which: str | None, attempt: int | None) -> TaskRow:
    """A task by id, else a task index (default 0) at ``attempt`` or its latest."""
    for t in tasks:
        if t.id == which:
            if attempt is not None and t.attempt != attempt:
                raise NotFound(f"task {which} is attempt {t.attempt}, not {attempt}", id=which)
            return t
    if which is not None and not which.isdigit():
        raise NotFound(f"no task {which} in this job", id=which)
    index = int(which or 0)
    chosen = [t for t in tasks if t.index == index]
    if not chosen:
        raise NotFound(f"task {index} of this job has not run yet", id=str(index))
    if attempt is None:
        return max(chosen, key=lambda t: (t.attempt, t.created_at))
    for t in chosen:
        if t.attempt == attempt:
            return t
    ran = ", ".join(str(a) for a in sorted({t.attempt for t in chosen}))
    raise NotFound(f"attempt: task {index} of this job has no attempt {attempt} "
                   f"(its attempts: {ran})", id=str(index), field="attempt")


@public.get("/jobs/{job_id}/logs", tags=["jobs"], responses=errors(*AUTHED, 404, 422))
async def job_logs(
    request: Request, ctx: Ctx, _: Caller, job_id: str,
    task: Annotated[str | None, Query(max_length=64, description="task id or index")] = None,
    stream: Annotated[str, Query(pattern=r"^(stdout|stderr)$")] = "stdout",
    offset: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=1 << 20)] = 1 << 20,
    attempt: Annotated[int | None, Query(
        ge=1, le=1_000_000, description="which attempt of the task (default: its latest)")
    ] = None,
) -> JobLogs:
    """What a task wrote, from ``offset``; agents ship it every second or so."""
    row, tasks = await ctx.jobs.get(job_id)
    chosen = _pick_task(tasks, task, attempt)
    got = await _files(request).read_log(chosen.id, stream, offset, limit)
    text, used = _utf8_prefix(got.data)
    return {"job": job_id, "job_state": row.state, "exit_code": row.exit_code,
            "task": chosen.id, "index": chosen.index, "attempt": chosen.attempt,
            "node": chosen.node, "task_state": chosen.state,
            "task_active": chosen.state in ACTIVE_TASK, "stream": stream, "offset": offset,
            "next_offset": got.end - (len(got.data) - used), "data": text,
            "size": got.size, "truncated": got.truncated,
            "started_at": iso(chosen.started_at), "ended_at": iso(chosen.ended_at)}


def _utf8_prefix(data: bytes) -> tuple[str, int]:
    """Text of ``data`` and how many bytes it used: a character cut at the
    end of a read is left for the next read, not garbled."""
    try:
        return data.decode("utf-8"), len(data)
    except UnicodeDecodeError as exc:
        if exc.reason == "unexpected end of data" and exc.start >= len(data) - 3:
            return data[:exc.start].decode("utf-8", errors="replace"), exc.start
        return data.decode("utf-8", errors="replace"), len(data)
