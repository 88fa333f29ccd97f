"""Capacity planning and learned requests:

- ``GET /api/v1/capacity/utilization``: allocated, pending and demand per
  group and resource, now and over a window (``service/planning_service.py``);
- ``GET /api/v1/capacity/forecast``: the forecast of allocated amount and of
  demand per group and resource, with intervals, exhaustion, model and
  back-test error;
- ``GET /api/v1/predictions/{name}``: what a job called ``name`` will use,
  learned from finished tasks (``service/usage_service.py``).

``start`` creates the planning service over this server's history and
alerts, and runs the loop that feeds the ``forecast_exhaustion`` alert.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request

from apportion.core.resources import parse_vector
from apportion.server.context import Caller, Ctx
from apportion.server.responses import AUTHED, errors
from apportion.server.responses.ops import Forecast, Prediction, Utilization
from apportion.service.planning_service import MAX_DAYS, PlanningService
from apportion.service.usage_service import UsageService

router = APIRouter(prefix="/api/v1", tags=["planning"])

GroupBy = Literal["facility", "type", "resource"]


def _planning(request: Request) -> PlanningService:
    planning: PlanningService = request.app.state.ctx.planning
    return planning


@router.get("/capacity/utilization", responses=errors(*AUTHED, 422))
async def utilization(
    request: Request, _: Caller,
    group_by: GroupBy = "resource",
    window_seconds: Annotated[float, Query(gt=0, le=MAX_DAYS * 86_400.0,
                                           allow_inf_nan=False)] = 3600.0,
) -> Utilization:
    """Per group and resource: total, allocated, pending (what waiting jobs
    still ask for) and demand (allocated + pending) now, and the mean and peak
    of allocated and demand over the last ``window_seconds``."""
    planning = _planning(request)
    answer: dict[str, Any] = await asyncio.to_thread(planning.utilization, group_by,
                                                     window_seconds)
    return answer


@router.get("/capacity/forecast", responses=errors(*AUTHED, 422))
async def forecast(
    request: Request, _: Caller,
    days: Annotated[float, Query(ge=1, le=MAX_DAYS, allow_inf_nan=False,
                                 description="how far ahead, 1 to 90 days")] = 7.0,
    group_by: GroupBy = "resource",
    history_days: Annotated[float | None, Query(
        ge=1, le=MAX_DAYS, allow_inf_nan=False,
        description="how much recorded history to fit on (default 35 days)")] = None,
    group: Annotated[str | None, Query(max_length=253)] = None,
    resource: Annotated[str | None, Query(max_length=63)] = None,
    points: Annotated[bool, Query(description="include the forecast and history points")]
    = True,
) -> Forecast:
    """Per group and resource: where the allocated amount and demand go over
    the next ``days``, with 80 % and 95 % intervals, when they reach capacity,
    which model was used (seasonal or not, and why) and its back-test error."""
    planning = _planning(request)
    answer: dict[str, Any] = await asyncio.to_thread(
        lambda: planning.forecast(days=days, group_by=group_by, history_days=history_days,
                                  group=group, resource=resource, points=points))
    return answer


@router.get("/predictions/{name}", responses=errors(*AUTHED, 422))
async def prediction(
    ctx: Ctx, caller: Caller,
    name: Annotated[str, Path(min_length=1, max_length=253)],
    user: Annotated[str | None, Query(min_length=1, max_length=253)] = None,
    command: Annotated[str | None, Query(max_length=1024)] = None,
    cpu: Annotated[str | None, Query(max_length=32)] = None,
    memory: Annotated[str | None, Query(max_length=32)] = None,
    gpu: Annotated[str | None, Query(max_length=32)] = None,
    runtime_s: Annotated[int | None, Query(ge=1, le=10 * 366 * 86_400)] = None,
) -> Prediction:
    """What a job called ``name`` of ``user`` (default: the caller) will use:
    peak memory, CPU seconds, run time, GPU memory and whatever past runs
    recorded, from its tier of evidence (model, robust, request, default),
    with confidence and sample count. The optional request (``cpu``,
    ``memory``, ``gpu``, ``runtime_s``) caps the estimate and feeds the model."""
    requested = parse_vector({k: v for k, v in (("cpu", cpu), ("memory", memory), ("gpu", gpu))
                              if v is not None}, "query")
    if runtime_s is not None:
        requested["runtime_s"] = runtime_s
    service = UsageService(ctx.uow.engine)
    answer: dict[str, Any] = await asyncio.to_thread(
        lambda: service.predict(name, user or caller.name, command=command,
                                requested=requested))
    return answer
