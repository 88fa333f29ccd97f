"""/api/v1/capacity: what the cluster has, by facility, type or resource."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter

from apportion.core.capacity import summarize
from apportion.core.resources import format_quantity
from apportion.server.context import Caller, Ctx

router = APIRouter(prefix="/api/v1/capacity", tags=["capacity"])


@router.get("/summary")
async def summary(
    ctx: Ctx,
    _: Caller,
    group_by: Literal["facility", "type", "resource", "zone", "node"] = "resource",
) -> dict[str, Any]:
    ledger = ctx.ledger
    pairs = [(node, ledger.allocated(name)) for name, node in ledger.nodes.items()]
    groups = []
    for group in summarize(pairs, group_by):
        resources = {}
        for resource, t in sorted(group.resources.items()):
            resources[resource] = {
                "total": format_quantity(resource, t.total),
                "allocated": format_quantity(resource, t.allocated),
                "available": format_quantity(resource, t.available),
                "total_base": t.total,
                "allocated_base": t.allocated,
                "available_base": t.available,
                "allocated_share": round(t.allocated_share, 6),
            }
        groups.append({"group": group.group, "nodes": group.nodes, "resources": resources})
    return {"group_by": group_by, "groups": groups}
