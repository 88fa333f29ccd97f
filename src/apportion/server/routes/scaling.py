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

from typing import Any

from fastapi import APIRouter, Request

from apportion.server.context import Caller
from apportion.server.responses import AUTHED, errors
from apportion.server.responses.ops import Scaling
from apportion.server.schemas import iso
from apportion.service.auth import Role
from apportion.service.scaling_service import ScalingService

router = APIRouter(prefix="/api/v1/scaling", tags=["scaling"])


def _service(request: Request) -> ScalingService | None:
    service: ScalingService | None = request.app.state.ctx.scaling
    return service


def _render(record: dict[str, Any]) -> dict[str, Any]:
    return {**record, "evaluated_at": iso(record["evaluated_at"])}


@router.get("/evaluation", responses=errors(*AUTHED))
async def evaluation(request: Request, _: Caller) -> Scaling:
    """Each pool's scaling decision now, with its reason; advice unless the
    pool's mode is ``auto``."""
    service = _service(request)
    if service is None:
        return {"pools": [], "message": "no node pools are configured"}
    return {"pools": [_render(r) for r in service.evaluation()]}


@router.post("/evaluate", responses=errors(*AUTHED, 403, 502))
async def evaluate_now(request: Request, caller: Caller) -> Scaling:
    """Run one scaling round now (acting for ``auto`` pools)."""
    caller.require(Role.ADMIN)
    service = _service(request)
    if service is None:
        return {"pools": [], "message": "no node pools are configured"}
    return {"pools": [_render(r) for r in await service.tick()]}


@router.get("/pools", responses=errors(*AUTHED))
async def pools(request: Request, _: Caller) -> Scaling:
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
