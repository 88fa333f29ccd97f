"""/api/v1/scaling: what the autoscaler decides for each node pool, and why.

- ``GET /api/v1/scaling/evaluation``: each pool's decision now (``scale_up``
  with count and node type, ``scale_down`` with the nodes to drain, or
  ``none``), its reason, and whether it is advice or acted on (``auto``).
  Evaluating does not act; the loop does, every ``scaling.interval_s``.
- ``GET /api/v1/scaling/pools``: pools, members, nodes joining and draining,
  recent decisions; provider settings with credentials as ``***``.
- ``POST /api/v1/scaling/evaluate`` (admin): run one round now, acting for
  ``auto`` pools, and answer it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, FastAPI, Request

from apportion.server.context import AppContext, Caller
from apportion.server.schemas import iso
from apportion.service.auth import Role
from apportion.service.join_tokens import JoinTokens
from apportion.service.scaling_service import ScalingService, load_scaling

router = APIRouter(prefix="/api/v1/scaling", tags=["scaling"])


async def install(app: FastAPI, ctx: AppContext) -> asyncio.Task[None] | None:
    """Read the pools, build their providers, recover state, start the loop.
    Call after the agents service exists (scale-downs drain through it).
    A bad pool or provider config fails the server's start, naming the field."""
    settings, config = await asyncio.to_thread(
        load_scaling, ctx.settings.config_file, ctx.settings.providers_file)
    join = JoinTokens(ctx.ledger.engine, ttl_s=settings.join_token_ttl_s)
    app.state.join_tokens = join
    app.state.scaling = None
    if config is None or not config.pools:
        return None
    agents = app.state.agents

    async def drain(node: str) -> None:
        await agents.drain(node, None)

    service = await asyncio.to_thread(
        ScalingService, ctx.ledger, ctx.jobs, ctx.auth, join, config, drain=drain,
        settings=settings, server_url=ctx.settings.server_url or "http://127.0.0.1:8080")
    await asyncio.to_thread(service.load)
    app.state.scaling = service
    # Jobs that only a pool's nodes can hold are accepted (and wait for them).
    ctx.jobs.potential_nodes = service.potential_nodes
    return asyncio.get_running_loop().create_task(service.run_forever())


def _service(request: Request) -> ScalingService | None:
    service: ScalingService | None = getattr(request.app.state, "scaling", None)
    return service


def _render(record: dict[str, Any]) -> dict[str, Any]:
    return {**record, "evaluated_at": iso(record["evaluated_at"])}


@router.get("/evaluation")
async def evaluation(request: Request, _: Caller) -> dict[str, Any]:
    """Each pool's scaling decision now, with its reason; advice unless the
    pool's mode is ``auto``."""
    service = _service(request)
    if service is None:
        return {"pools": [], "message": "no node pools are configured"}
    return {"pools": [_render(r) for r in service.evaluation()]}


@router.post("/evaluate")
async def evaluate_now(request: Request, caller: Caller) -> dict[str, Any]:
    """Run one scaling round now (acting for ``auto`` pools)."""
    caller.require(Role.ADMIN)
    service = _service(request)
    if service is None:
        return {"pools": [], "message": "no node pools are configured"}
    return {"pools": [_render(r) for r in await service.tick()]}


@router.get("/pools")
async def pools(request: Request, _: Caller) -> dict[str, Any]:
    """Pools, their members, joining and draining nodes, recent decisions."""
    service = _service(request)
    if service is None:
        return {"pools": [], "message": "no node pools are configured"}
    out = []
    for pool in service.describe_pools():
        pool["recent_decisions"] = [_render(r) for r in pool["recent_decisions"]]
        pool["last_scale_up_at"] = iso(pool["last_scale_up_at"])
        pool["last_scale_down_at"] = iso(pool["last_scale_down_at"])
        for joining in pool["joining"]:
            joining["since"] = iso(joining["since"])
        out.append(pool)
    return {"pools": out, "interval_s": service.settings.interval_s}
