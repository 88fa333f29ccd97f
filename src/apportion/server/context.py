"""What route handlers share: the services of this process, and the caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from apportion.service.auth import Principal
from apportion.service.wiring import Services

AppContext = Services


async def context(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


async def principal(request: Request) -> Principal:
    ctx: AppContext = request.app.state.ctx
    return await ctx.auth.authenticate(request.headers.get("authorization"))


Ctx = Annotated[AppContext, Depends(context)]
Caller = Annotated[Principal, Depends(principal)]
