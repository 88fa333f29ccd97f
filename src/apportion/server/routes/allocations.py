"""/api/v1/allocations: grants and releases through the ledger."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Response

from apportion.core.model import AllocationState, ReleaseReason
from apportion.core.resources import parse_vector
from apportion.exceptions import PermissionDenied
from apportion.server.context import AppContext, Caller, Ctx
from apportion.server.memo import Memo
from apportion.server.responses import AUTHED, BODY, errors
from apportion.server.responses.nodes import (
    Allocation,
    AllocationList,
    AllocationOut,
    AllocationReleasingOut,
)
from apportion.server.schemas import AllocationIn, render_allocation
from apportion.service.auth import Principal, Role

router = APIRouter(prefix="/api/v1/allocations", tags=["allocations"])


# Bound once: on Python 3.11 every ``Role.ADMIN`` is a lookup through the enum
# class's ``__getattr__`` hook (``core/model.py`` says more), three a grant.
_ADMIN = Role.ADMIN
_GRANTERS = (Role.ADMIN, Role.USER)


def _owner_for(caller: Principal, asked: str | None) -> str | None:
    """Users allocate as themselves; admins may name any owner."""
    if caller.role is _ADMIN:
        return asked
    if asked is not None and asked != caller.name:
        raise PermissionDenied(
            f"owner: token {caller.name} may only allocate as itself, not {asked!r}", field="owner"
        )
    return caller.name


_PARSED: Memo[tuple[tuple[tuple[str, Any], ...], tuple[type, ...]], dict[str, int]] = Memo()


def _parse_request(resources: dict[str, Any]) -> dict[str, int]:
    """``parse_vector`` remembered per request body: clients ask for the same
    few shapes over and over, and exact parsing (Decimal, Fraction) was a
    tenth of a grant's CPU. Keyed on the value's type too (``1``, ``1.0`` and
    ``True`` hash alike); refusals are not remembered, they raise every time."""
    key = (tuple(resources.items()), tuple(map(type, resources.values())))
    return dict(_PARSED.get(key, lambda: parse_vector(resources)))


READ_FROM_DICT = ("resources", "node", "owner", "labels")
"""AllocationIn's fields ``grant_allocation`` reads from ``body.__dict__``."""


async def grant_allocation(
    ctx: AppContext, caller: Principal, body: AllocationIn
) -> dict[str, Any]:
    """The one implementation of a grant request (the route below and the
    fast path in ``server/fastpath.py`` both call it)."""
    caller.require(*_GRANTERS)
    # The fields from the model's own dict: pydantic's BaseModel has a
    # ``__getattr__``, which puts every attribute read through a Python-level
    # lookup hook (four reads here were ~3,000 instructions a grant). This
    # couples the names below to AllocationIn's fields: READ_FROM_DICT lists
    # them, and a test holds them to the model.
    fields = body.__dict__
    request = _parse_request(fields["resources"])
    alloc = await ctx.ledger.grant(request, node=fields["node"],
                                   owner=_owner_for(caller, fields["owner"]),
                                   labels=fields["labels"])
    return render_allocation(alloc)


@router.post("", status_code=201, response_model=None, responses={
    201: {"model": AllocationOut, "description": "granted"},
    **errors(*AUTHED, *BODY, 403, 404, 409)})
async def grant(ctx: Ctx, caller: Caller, body: AllocationIn) -> Response:
    """Grant resources on a node, or on the best-fitting ready node.

    Served by ``server/fastpath.py`` in the running server; this route
    documents it and serves it wherever the fast path is not installed."""
    granted = await grant_allocation(ctx, caller, body)
    return Response(orjson.dumps(granted), status_code=201, media_type="application/json")


@router.get("", responses=errors(*AUTHED, 422))
async def list_allocations(
    ctx: Ctx,
    _: Caller,
    node: Annotated[str | None, Query(max_length=253)] = None,
    owner: Annotated[str | None, Query(max_length=253)] = None,
    state: AllocationState | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> AllocationList:
    rows = await ctx.ledger.list_allocations(node=node, owner=owner,
                                             state=state.value if state else None,
                                             limit=limit, offset=offset)
    return {
        "allocations": [render_allocation(a) for a in rows],
        "count": len(rows),
        "limit": limit,
        "offset": offset,
    }


@router.get("/{alloc_id}", responses=errors(*AUTHED, 404, 422))
async def get_allocation(ctx: Ctx, _: Caller, alloc_id: str) -> Allocation:
    return render_allocation(await ctx.ledger.get_allocation(alloc_id))


@router.delete("/{alloc_id}", response_model=None, responses={
    200: {"model": AllocationOut, "description": "released"},
    202: {"model": AllocationReleasingOut,
          "description": "forced: the task is stopping; released at its exit"},
    **errors(*AUTHED, 403, 404, 409, 422)})
async def release(
    ctx: Ctx, caller: Caller, alloc_id: str, reason: ReleaseReason = ReleaseReason.RELEASED,
    force: Annotated[bool, Query(description="admin: cancel the job whose task holds it, "
                                             "and release once its process has exited")] = False,
    wait: Annotated[float, Query(ge=0, le=300, description="seconds a forced release waits "
                                                           "for the exit")] = 30.0,
) -> Response:
    """Release an allocation. One held by a live task is refused (409
    ``allocation_owned_by_task``): cancel its job. Reasons apportion records
    itself (``node_lost``, ``preempted``, ``completed``...) are refused to users."""
    caller.require(Role.ADMIN, Role.USER)
    alloc = await ctx.ledger.get_allocation(alloc_id)
    if caller.role is not Role.ADMIN and alloc.owner != caller.name:
        raise PermissionDenied(
            f"allocation {alloc_id} belongs to {alloc.owner or 'nobody'}; token {caller.name} may "
            "release only its own",
            id=alloc_id,
        )
    released, done = await ctx.allocations.release(alloc_id, reason, admin=caller.role is
                                                   Role.ADMIN, force=force, wait_s=wait)
    body = render_allocation(released)
    if not done:
        body["releasing"] = True
    return Response(orjson.dumps(body), status_code=200 if done else 202,
                    media_type="application/json")
