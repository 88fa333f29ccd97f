"""What route handlers share: the services of this process, and the caller."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from apportion.service.alerts_service import AlertsService
from apportion.service.auth import Authenticator, Principal
from apportion.service.health_service import HealthService
from apportion.service.jobs_service import JobsService
from apportion.service.ledger_service import LedgerService
from apportion.service.settings import Settings


@dataclass
class AppContext:
    settings: Settings
    ledger: LedgerService
    auth: Authenticator
    jobs: JobsService
    health: HealthService
    alerts: AlertsService


async def context(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


async def principal(request: Request) -> Principal:
    ctx: AppContext = request.app.state.ctx
    return await ctx.auth.authenticate(request.headers.get("authorization"))


Ctx = Annotated[AppContext, Depends(context)]
Caller = Annotated[Principal, Depends(principal)]
