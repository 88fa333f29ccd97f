"""/api/v1/nodes: the inventory."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from apportion.core.labels import matches, parse_selector
from apportion.core.model import Health, Node, NodeState
from apportion.exceptions import InvalidInput, PermissionDenied
from apportion.server.context import AppContext, Caller, Ctx
from apportion.server.convert import node_from, node_updated
from apportion.server.responses import AUTHED, BODY, errors
from apportion.server.responses.nodes import Node as NodeAnswer
from apportion.server.responses.nodes import NodeDeleted, NodeDetail, NodeList
from apportion.server.schemas import NodeIn, NodeUpdate, render_allocation, render_node
from apportion.service.auth import Role

router = APIRouter(prefix="/api/v1/nodes", tags=["nodes"])


ALLOCATIONS_SHOWN = 1000
"""Allocations a node's page lists by default (``allocations_limit`` asks for
more): rendering 10,000 of them held the event loop for a tenth of a second."""


def _render(ctx: AppContext, node: Node, *, allocations_limit: int | None = None
            ) -> dict[str, Any]:
    ledger = ctx.ledger
    allocs = ledger.allocations_on(node.name)
    holders: dict[str, dict[str, str]] = {}
    for alloc in allocs:
        for resource, ids in alloc.devices.items():
            for device_id in ids:
                holders.setdefault(resource, {})[device_id] = alloc.id
    body = render_node(node, ledger.allocated(node.name), holders)
    if allocations_limit is not None:
        body["allocations"] = [render_allocation(a) for a in allocs[:allocations_limit]]
        body["allocations_total"] = len(allocs)
    return body


@router.get("", responses=errors(*AUTHED, 422))
async def list_nodes(
    ctx: Ctx,
    _: Caller,
    type: Annotated[str | None, Query(max_length=253)] = None,
    facility: Annotated[str | None, Query(max_length=253)] = None,
    state: NodeState | None = None,
    health: Health | None = None,
    selector: Annotated[
        str | None, Query(max_length=4096, description="e.g. facility=texas-1,gpu.model=H100")
    ] = None,
) -> NodeList:
    requirements = parse_selector(selector or "")
    nodes = []
    for node in sorted(ctx.ledger.nodes.values(), key=lambda n: n.name):
        if type is not None and node.labels.get("type") != type:
            continue
        if facility is not None and node.labels.get("facility") != facility:
            continue
        if state is not None and node.state is not state:
            continue
        if health is not None and node.health is not health:
            continue
        if not matches(node.labels, requirements):
            continue
        nodes.append(_render(ctx, node))
    return {"nodes": nodes, "count": len(nodes)}


@router.post("", status_code=201, responses=errors(*AUTHED, *BODY, 403, 409))
async def register_node(ctx: Ctx, caller: Caller, body: NodeIn) -> NodeAnswer:
    caller.may_manage_node(body.name)
    node = await ctx.ledger.register_node(node_from(body))
    return _render(ctx, node)


@router.get("/{name}", responses=errors(*AUTHED, 404, 422))
async def get_node(
    ctx: Ctx, _: Caller, name: str,
    allocations_limit: Annotated[int, Query(ge=0, le=100_000, description="allocations listed")]
    = ALLOCATIONS_SHOWN,
) -> NodeDetail:
    """A node, with its active allocations (``allocations_total`` counts them all)."""
    return _render(ctx, ctx.ledger.node(name), allocations_limit=allocations_limit)


@router.put("/{name}", responses=errors(*AUTHED, *BODY, 403, 404, 409))
async def update_node(ctx: Ctx, caller: Caller, name: str, body: NodeUpdate
                      ) -> NodeAnswer:
    caller.may_manage_node(name)
    if body.name is not None and body.name != name:
        raise InvalidInput(
            f"name: the body names {body.name!r} but the path names {name!r}; "
            "nodes cannot be renamed",
            field="name",
        )
    current = ctx.ledger.node(name)
    if body.state is not None and body.state is not current.state \
            and caller.role is not Role.ADMIN:
        # An agent (or a stolen agent token) must not undo an admin's cordon or drain.
        raise PermissionDenied(
            f"state: only an admin changes a node's state (cordon, drain, uncordon); token "
            f"{caller.name} is {caller.role.value}", field="state", node=name)
    node = await ctx.ledger.update_node(node_updated(current, body))
    return _render(ctx, node)


@router.delete("/{name}", responses=errors(*AUTHED, 403, 404, 409, 422))
async def delete_node(ctx: Ctx, caller: Caller, name: str, force: bool = False
                      ) -> NodeDeleted:
    caller.require(Role.ADMIN)
    released = await ctx.ledger.delete_node(name, force=force)
    return {"deleted": name, "released": [render_allocation(a) for a in released]}
