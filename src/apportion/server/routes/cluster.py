"""/api/v1/cluster: the servers sharing this store, and which one leads."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter

from apportion.server.context import Caller, Ctx
from apportion.server.responses import AUTHED, errors
from apportion.server.responses.ops import Cluster
from apportion.server.schemas import iso

router = APIRouter(prefix="/api/v1", tags=["cluster"])


@router.get("/cluster", responses=errors(*AUTHED))
async def cluster(ctx: Ctx, _: Caller) -> Cluster:
    """Every server seen in the last hour (alive or not), the leader, its
    epoch and since when. Any server answers, from the store."""
    view: dict[str, Any] = await asyncio.to_thread(ctx.leadership.cluster)
    leader = view["leader"]
    leader["since"] = iso(leader["since"])
    for server in view["servers"]:
        server["started_at"] = iso(server["started_at"])
        server["last_seen"] = iso(server["last_seen"])
    view["leader_timeout_s"] = ctx.leadership.timeout_s
    return view
