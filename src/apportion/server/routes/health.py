"""/api/v1/health-checks and /api/v1/alerts: what is sick, and what is firing."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter

from apportion.server.context import Caller, Ctx
from apportion.server.responses import AUTHED, errors
from apportion.server.responses.ops import Alerts, HealthChecks, NodeHealth

router = APIRouter(prefix="/api/v1", tags=["health"])


@router.get("/health-checks", responses=errors(*AUTHED))
async def health_checks(ctx: Ctx, _: Caller) -> HealthChecks:
    """Every node's health status with its reasons and recent changes."""
    names = sorted(ctx.ledger.nodes)
    return {"nodes": [_node_health(ctx, n) for n in names]}


@router.get("/health-checks/{node}", responses=errors(*AUTHED, 404, 422))
async def health_check(ctx: Ctx, _: Caller, node: str) -> NodeHealth:
    return _node_health(ctx, ctx.ledger.node(node).name)


def _node_health(ctx: Any, name: str) -> dict[str, Any]:
    node = ctx.ledger.node(name)
    report: dict[str, Any] = ctx.health.report(name)
    # The node's recorded status is the one the scheduler acts on.
    report["status"] = node.health.value
    report["state"] = node.state.value
    return report


@router.get("/alerts", responses=errors(*AUTHED, 422))
async def alerts(
    ctx: Ctx, _: Caller,
    state: Literal["firing", "resolved"] | None = None,
    severity: Literal["warning", "critical"] | None = None,
) -> Alerts:
    rows = await ctx.alerts.listing(state=state, severity=severity)
    return {"alerts": rows, "count": len(rows)}
