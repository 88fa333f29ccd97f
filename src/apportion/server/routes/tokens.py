"""/api/v1/tokens: admins create and list API tokens; everyone may ask who they
are. /api/v1/auth: one-time sign-in codes for the dashboard, and their exchange
for a session token."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from apportion.exceptions import NotFound
from apportion.server.context import Caller, Ctx
from apportion.server.responses import AUTHED, BODY, errors
from apportion.server.responses.ops import (
    LoginCode,
    Session,
    TokenCreated,
    TokenList,
    TokenRevoked,
    Whoami,
)
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
            {
                "id": r.id,
                "name": r.name,
                "role": r.role,
                "created_at": iso(r.created_at),
                "expires_at": iso(r.expires_at),
            }
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


class SessionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: Annotated[
        str,
        Field(
            min_length=1,
            max_length=128,
            description="the one-time code from POST /api/v1/auth/codes",
        ),
    ]


@router.post("/auth/codes", status_code=201, responses=errors(*AUTHED, 403))
async def create_code(ctx: Ctx, caller: Caller) -> LoginCode:
    """A one-time sign-in code for the dashboard (``apportion dashboard``):
    it works once, within ``expires_in_s``, and opens a session as the
    caller (admin or user)."""
    code, record = await ctx.tokens.issue_code(caller)
    return {
        "code": code,
        "name": record.name,
        "role": record.role,
        "expires_at": iso(record.expires_at),
        "expires_in_s": round(record.expires_at - record.created_at, 3),
    }


@router.post("/auth/session", responses=errors(401, 429, 503, *BODY))
async def create_session(ctx: Ctx, body: SessionIn) -> Session:
    """Exchange a sign-in code (no token needed: the code is the credential)
    for a session token that ends at ``expires_at``; a used, expired or
    unknown code answers 401 saying which."""
    token, record = await ctx.tokens.redeem_code(body.code)
    return {
        "token": token,
        "name": record.name,
        "role": record.role,
        "expires_at": iso(record.expires_at),
    }
