"""/api/v1/tokens: admins create and list API tokens; everyone may ask who they are."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from apportion.exceptions import NotFound
from apportion.server.context import Caller, Ctx
from apportion.server.responses import AUTHED, BODY, errors
from apportion.server.responses.ops import TokenCreated, TokenList, TokenRevoked, Whoami
from apportion.server.schemas import TokenIn, iso
from apportion.service.auth import Role

router = APIRouter(prefix="/api/v1", tags=["tokens"])


@router.post("/tokens", status_code=201, responses=errors(*AUTHED, *BODY, 403))
async def create_token(ctx: Ctx, caller: Caller, body: TokenIn) -> TokenCreated:
    caller.require(Role.ADMIN)
    token, record = await asyncio.to_thread(ctx.auth.create, body.name, body.role)
    return {
        "token": token,
        "id": record.id,
        "name": record.name,
        "role": record.role,
        "created_at": iso(record.created_at),
    }


@router.get("/tokens", responses=errors(*AUTHED, 403))
async def list_tokens(ctx: Ctx, caller: Caller) -> TokenList:
    caller.require(Role.ADMIN)
    records = await ctx.tokens.list()
    return {
        "tokens": [
            {"id": r.id, "name": r.name, "role": r.role, "created_at": iso(r.created_at)}
            for r in records
        ]
    }


@router.delete("/tokens/{name}", responses=errors(*AUTHED, 403, 404, 422))
async def revoke_token(ctx: Ctx, caller: Caller, name: str) -> TokenRevoked:
    """Revoke every token called ``name``: refused at once on this server and
    within moments on the others (their cached copies are dropped when this
    server's event reaches them, at most ``CACHE_S`` later)."""
    caller.require(Role.ADMIN)
    count = await ctx.tokens.revoke(name)
    if count == 0:
        raise NotFound(f"no token is called {name!r}", name=name)
    return {"name": name, "revoked": count}


@router.get("/whoami", responses=errors(*AUTHED))
async def whoami(caller: Caller) -> Whoami:
    return {"name": caller.name, "role": caller.role.value}
