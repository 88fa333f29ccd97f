"""/api/v1/jobs and /api/v1/queues: submit, follow, explain and cancel work."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Query

from apportion.core.records import JobRow, TaskRow
from apportion.core.resources import format_vector
from apportion.core.scheduling import JobState
from apportion.core.scheduling.explain_nodes import NODES_SHOWN, NodeTable
from apportion.exceptions import PermissionDenied
from apportion.server.context import AppContext, Caller, Ctx
from apportion.server.responses import AUTHED, BODY, errors
from apportion.server.responses.jobs import Explain, Job, JobDetail, JobList, Queue, QueueList
from apportion.server.schemas import CompleteIn, JobIn, QueueIn, iso
from apportion.service.auth import Principal, Role
from apportion.service.usage_service import UsageService, wants_prediction

router = APIRouter(prefix="/api/v1", tags=["jobs"])


def render_task(t: TaskRow) -> dict[str, Any]:
    return {"id": t.id, "index": t.index, "attempt": t.attempt, "node": t.node,
            "allocation_id": t.allocation_id, "state": t.state, "exit_code": t.exit_code,
            "reason": t.reason, "created_at": iso(t.created_at), "started_at": iso(t.started_at),
            "ended_at": iso(t.ended_at)}


TASKS_SHOWN = 1000
"""Task attempts a job's page shows by default (``tasks_limit`` asks for more):
rendering a 10,000-task job whole held the event loop for a tenth of a second."""


def task_counts(row: JobRow) -> dict[str, int]:
    """How many of a job's tasks wait, run and have succeeded, from its row's
    counters (no scan of its tasks); ``failed`` counts failed attempts."""
    spec = row.spec
    total = spec.get("array") or sum(int(t.get("count", 1)) for t in spec.get("tasks") or [
        {"count": spec.get("count", 1)}])
    ended = row.state in ("succeeded", "failed", "cancelled")
    waiting = 0 if ended else max(0, total - row.tasks_active - row.tasks_succeeded)
    return {"total": total, "pending": waiting, "active": row.tasks_active,
            "succeeded": row.tasks_succeeded, "failed": row.task_failures}


def render_job(row: JobRow, tasks: list[TaskRow] | None = None,
               total: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"id": row.id, "name": row.name, "owner": row.owner, "queue": row.queue,
            "priority": row.priority, "state": row.state, "spec": row.spec,
            "submitted_at": iso(row.submit_time), "started_at": iso(row.started_at),
            "ended_at": iso(row.ended_at), "reason": row.reason, "exit_code": row.exit_code,
            "attempts": row.attempts, "preemptions": row.preemptions}
    body["array"] = row.spec.get("array")
    body["task_counts"] = task_counts(row)
    if tasks is not None:
        body["tasks"] = [render_task(t) for t in tasks]
        body["tasks_total"] = len(tasks) if total is None else total
    return body


def _may_change(caller: Principal, row: JobRow) -> None:
    if caller.role is Role.ADMIN or (caller.role is Role.USER and row.owner == caller.name):
        return
    raise PermissionDenied(f"job {row.id} belongs to {row.owner or 'nobody'}; token "
                           f"{caller.name} may change only its own jobs", id=row.id)


async def submit_job(ctx: AppContext, caller: Principal, body: JobIn) -> dict[str, Any]:
    """The one implementation of a submission (the route below and the fast
    path in ``server/fastsubmit.py`` both call it)."""
    caller.require(Role.ADMIN, Role.USER)
    spec = body.model_dump(exclude_none=True)
    if wants_prediction(spec):
        # "auto" resources: predicted from past runs, recorded in spec.prediction.
        spec = await asyncio.to_thread(UsageService(ctx.uow.engine).fill_auto, spec,
                                       caller.name)
    row = await ctx.jobs.submit(spec, caller.name)
    return render_job(row, [])


@router.post("/jobs", status_code=201, responses=errors(*AUTHED, *BODY, 403, 409))
async def submit(ctx: Ctx, caller: Caller, body: JobIn) -> JobDetail:
    """Submit a job. Served by ``server/fastsubmit.py`` in the running server
    for a body that validates; this route answers every other one."""
    return await submit_job(ctx, caller, body)


@router.get("/jobs", responses=errors(*AUTHED, 422))
async def list_jobs(
    ctx: Ctx, _: Caller,
    state: JobState | None = None,
    queue: Annotated[str | None, Query(max_length=253)] = None,
    owner: Annotated[str | None, Query(max_length=253)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> JobList:
    rows = await ctx.jobs.list_jobs(states=[state.value] if state else None, queue=queue,
                                    owner=owner, limit=limit, offset=offset)
    return {"jobs": [render_job(r) for r in rows], "count": len(rows)}


@router.get("/jobs/{job_id}", responses=errors(*AUTHED, 404, 422))
async def get_job(
    ctx: Ctx, _: Caller, job_id: str,
    tasks_limit: Annotated[int, Query(ge=0, le=10_000, description="task attempts shown")]
    = TASKS_SHOWN,
    tasks_offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> JobDetail:
    """A job and its task attempts, oldest first (``tasks_total`` counts them all)."""
    row, tasks, total = await ctx.jobs.get_page(job_id, limit=tasks_limit, offset=tasks_offset)
    return render_job(row, tasks, total)


@router.get("/jobs/{job_id}/explain", responses=errors(*AUTHED, 404, 422))
async def explain_job(
    ctx: Ctx, _: Caller, job_id: str,
    nodes: Annotated[bool, Query(description="list each node with why it cannot take the job "
                                             "now and whether it ever could")] = False,
    nodes_limit: Annotated[int, Query(ge=0, le=10_000, description="nodes listed with "
                                      "nodes=true; the rest are counted by reason")]
    = NODES_SHOWN,
) -> Explain:
    await ctx.jobs.get_page(job_id, limit=0)  # 404 for an unknown id
    why = ctx.jobs.explain(job_id)
    waiting = ctx.jobs.last_cycle.unplaced.get(job_id) if ctx.jobs.last_cycle else None
    body = {"job": job_id, "status": why.status, "summary": why.summary(),
            "nodes_total": why.nodes_total, "counts": dict(why.counts),
            "messages": dict(why.messages), "hints": list(why.hints),
            "earliest_start": iso(why.earliest_start),
            "waiting_for": waiting.message if waiting else None}
    if nodes:
        body.update(render_node_table(ctx.jobs.explain_nodes(job_id, limit=nodes_limit)))
    return body


def render_node_table(table: NodeTable) -> dict[str, Any]:
    return {
        "nodes": [{"node": v.node, "now": v.now, "ever": v.ever,
                   "reason": v.reason.message if v.reason else None,
                   "code": v.reason.code.value if v.reason else None,
                   "plugin": v.reason.plugin if v.reason else None,
                   "never": v.never.message if v.never else None} for v in table.nodes],
        "nodes_shown": len(table.nodes), "nodes_more": table.more,
        "nodes_more_counts": dict(table.rest),
    }


@router.post("/jobs/{job_id}/cancel", responses=errors(*AUTHED, 403, 404, 409, 422))
async def cancel_job(ctx: Ctx, caller: Caller, job_id: str) -> JobDetail:
    row, _, _ = await ctx.jobs.get_page(job_id, limit=0)
    _may_change(caller, row)
    row = await ctx.jobs.cancel(job_id)
    _, tasks, total = await ctx.jobs.get_page(job_id, limit=TASKS_SHOWN)
    return render_job(row, tasks, total)


@router.post("/jobs/{job_id}/complete", responses=errors(*AUTHED, *BODY, 403, 404, 409))
async def complete_job(ctx: Ctx, caller: Caller, job_id: str, body: CompleteIn) -> Job:
    """End a lease job (one without a command): its resources are released."""
    row, _, _ = await ctx.jobs.get_page(job_id, limit=0)
    _may_change(caller, row)
    row = await ctx.jobs.complete(job_id, succeeded=body.succeeded, exit_code=body.exit_code)
    return render_job(row)


def render_queue(name: str, ctx: AppContext, usage: dict[str, dict[str, int]]) -> dict[str, Any]:
    q = ctx.jobs.queues[name]
    state = usage.get(name, {})
    return {"name": q.name, "quota": format_vector(q.quota), "quota_base": dict(q.quota),
            "weight": q.weight, "min_priority": q.min_priority, "max_priority": q.max_priority,
            "usage": format_vector(state), "usage_base": dict(state)}


@router.get("/queues", responses=errors(*AUTHED))
async def list_queues(ctx: Ctx, _: Caller) -> QueueList:
    usage = ctx.jobs.queue_usage()
    return {"queues": [render_queue(n, ctx, usage) for n in sorted(ctx.jobs.queues)]}


async def _put_queue(ctx: AppContext, caller: Principal, body: QueueIn) -> dict[str, Any]:
    caller.require(Role.ADMIN)
    await ctx.jobs.put_queue(body.name, body.quota, body.weight, body.min_priority,
                             body.max_priority)
    return render_queue(body.name, ctx, ctx.jobs.queue_usage())


@router.post("/queues", status_code=201, responses=errors(*AUTHED, *BODY, 403, 409))
async def create_queue(ctx: Ctx, caller: Caller, body: QueueIn) -> Queue:
    """Create a queue (or replace one of that name)."""
    return await _put_queue(ctx, caller, body)


@router.put("/queues", responses=errors(*AUTHED, *BODY, 403, 409))
async def update_queue(ctx: Ctx, caller: Caller, body: QueueIn) -> Queue:
    """Update the queue named in the body."""
    return await _put_queue(ctx, caller, body)
