"""/api/v1/capacity: what the cluster has, by facility, type or resource."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from fastapi import APIRouter

from apportion.core.capacity import COMMON_SHAPES, fragmentation_report, summarize
from apportion.core.model import NodeState
from apportion.core.resources import format_quantity, format_vector
from apportion.server.context import Caller, Ctx
from apportion.server.responses import AUTHED, errors
from apportion.server.responses.ops import CapacitySummary, Fragmentation

router = APIRouter(prefix="/api/v1/capacity", tags=["capacity"])


@router.get("/summary", responses=errors(*AUTHED, 422))
async def summary(
    ctx: Ctx,
    _: Caller,
    group_by: Literal["facility", "type", "resource", "zone", "node"] = "resource",
) -> CapacitySummary:
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


@router.get("/fragmentation", responses=errors(*AUTHED))
async def fragmentation(ctx: Ctx, _: Caller) -> Fragmentation:
    """Per resource: the free total on ready nodes, the largest free block on
    one node, and a fragmentation index (1 - largest block / free); per
    request shape (the waiting jobs' shapes, else common ones): how many fit
    now, and how many would if the free capacity were one node."""
    ledger = ctx.ledger
    free = [ledger.free(name) for name, node in ledger.nodes.items()
            if node.state is NodeState.READY]
    shapes: list[Mapping[str, int]] = [*ctx.jobs.waiting_shapes()] or list(COMMON_SHAPES)
    resources, fits = fragmentation_report(free, shapes)
    return {
        "resources": [{
            "resource": r.resource, "free": format_quantity(r.resource, r.free),
            "free_base": r.free, "largest_block": format_quantity(r.resource, r.largest_block),
            "largest_block_base": r.largest_block, "nodes_with_free": r.nodes_with_free,
            "fragmentation_index": round(r.index, 4)} for r in resources],
        "shapes": [{"shape": format_vector(f.shape), "shape_base": dict(f.shape),
                    "fits": f.fits, "fits_if_whole": f.if_whole} for f in fits],
        "shapes_from": "waiting jobs" if ctx.jobs.waiting_shapes() else "common shapes",
    }
