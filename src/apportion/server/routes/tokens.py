"""/api/v1/tokens: admins create and list API tokens; everyone may ask who they are."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter

from apportion.exceptions import NotFound
from apportion.server.context import Caller, Ctx
from apportion.server.schemas import TokenIn, iso
from apportion.service.auth import Role

router = APIRouter(prefix="/api/v1", tags=["tokens"])


@router.post("/tokens", status_code=201)
async def create_token(ctx: Ctx, caller: Caller, body: TokenIn) -> dict[str, Any]:
    caller.require(Role.ADMIN)
    token, record = await asyncio.to_thread(ctx.auth.create, body.name, body.role)
    return {
        "token": token,
        "id": record.id,
        "name": record.name,
        "role": record.role,
        "created_at": iso(record.created_at),
    }


@router.get("/tokens")
async def list_tokens(ctx: Ctx, caller: Caller) -> dict[str, Any]:
    caller.require(Role.ADMIN)
    records = await ctx.tokens.list()
    return {
        "tokens": [
            {"id": r.id, "name": r.name, "role": r.role, "created_at": iso(r.created_at)}
            for r in records
        ]
    }


@router.delete("/tokens/{name}")
async def revoke_token(ctx: Ctx, caller: Caller, name: str) -> dict[str, Any]:
    """Revoke every token called ``name``: refused at once on this server and
    within moments on the others (their cached copies are dropped when this
    server's event reaches them, at most ``CACHE_S`` later)."""
    caller.require(Role.ADMIN)
    count = await ctx.tokens.revoke(name)
    if count == 0:
        raise NotFound(f"no token is called {name!r}", name=name)
    return {"name": name, "revoked": count}


@router.get("/whoami")
async def whoami(caller: Caller) -> dict[str, Any]:
    return {"name": caller.name, "role": caller.role.value}
