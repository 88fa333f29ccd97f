"""Example: a model server that stays inside its memory budget.

"Models" are numpy arrays of a configurable size; a request picks one,
needs some scratch memory, and computes a little on both. Configured by
environment variables (the load script sets them):

    GUARD_BUDGET        the process's whole memory budget (default 256Mi)
    GUARD_MODEL_SIZE    bytes of one model (default 40Mi)
    GUARD_MODELS        how many different models exist (default 8)
    GUARD_REQUEST_MEM   scratch memory of one request (default 8Mi)
    GUARD_WORK_MS       simulated inference time per request (default 20)
    GUARD_WAIT_MS       how long a request may wait for room before 503 (default 1000)
    GUARD_ENABLED       1: guarded (default); 0: a plain dict cache, no limits

Guarded, the ledger's capacity is the budget less a 10 % margin, and the
RSS the process already has at start-up is held as "baseline", so models
and requests share what is left: loads evict the least recently used idle
model; a request that finds no room within GUARD_WAIT_MS gets 503 with
Retry-After.

Run: ``uvicorn examples.guard_service.app:app --host 127.0.0.1 --port 8000``
(or let ``load.py`` start it).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import psutil
from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse
from starlette.requests import Request

from apportion.core.resources import parse_quantity
from apportion.guard import Guard, InsufficientHostResources
from apportion.guard.asgi import install

BUDGET = parse_quantity("memory", os.environ.get("GUARD_BUDGET", "256Mi"))
MODEL_SIZE = parse_quantity("memory", os.environ.get("GUARD_MODEL_SIZE", "40Mi"))
MODELS = int(os.environ.get("GUARD_MODELS", "8"))
REQUEST_MEM = parse_quantity("memory", os.environ.get("GUARD_REQUEST_MEM", "8Mi"))
WORK_S = float(os.environ.get("GUARD_WORK_MS", "20")) / 1000.0
ENABLED = os.environ.get("GUARD_ENABLED", "1") != "0"
WAIT_S = float(os.environ.get("GUARD_WAIT_MS", "1000")) / 1000.0
MARGIN = 0.10


# Alerts are in /guard/alerts; keep the console for errors.
logging.getLogger("apportion.guard").setLevel(
    os.environ.get("GUARD_LOG_LEVEL", "ERROR").upper()
)


def load_model(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        seed = sum(name.encode())
        return np.full(MODEL_SIZE // 4, seed % 7 + 1, dtype=np.float32)

    return load


def infer(weights: np.ndarray) -> float:
    scratch = np.ones(REQUEST_MEM // 4, dtype=np.float32)  # the request's working memory
    return float(weights[:4096].sum() + scratch.sum() / scratch.size)


guard = Guard.create(
    capacity={"memory": int(BUDGET * (1 - MARGIN))},
    profiles={"request": {"memory": REQUEST_MEM}},
    interval=0.5,
    history_seconds=120,
)
plain_cache: dict[str, np.ndarray] = {}


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    # What the interpreter, numpy and FastAPI already occupy is part of the
    # budget: hold it for the whole run so only the rest is handed out.
    baseline = guard.reserve({"memory": psutil.Process().memory_info().rss}).acquire()
    guard.start()
    try:
        yield
    finally:
        guard.stop()
        baseline.release()


app = FastAPI(title="guarded model server", lifespan=lifespan)
if ENABLED:
    install(app, guard, request_profile="request", retry_after=1, timeout=WAIT_S)
else:
    from apportion.guard.asgi import guard_router

    app.include_router(guard_router(guard))


@app.exception_handler(InsufficientHostResources)
async def no_room(_request: Request, exc: InsufficientHostResources) -> JSONResponse:
    return JSONResponse(exc.to_dict(), status_code=503, headers={"Retry-After": "1"})


@app.get("/predict/{model_id}")
async def predict(model_id: int) -> dict[str, Any]:
    if not 0 <= model_id < MODELS:
        raise HTTPException(404, f"no model {model_id}")
    name = f"model-{model_id}"
    if not ENABLED:
        weights = plain_cache.get(name)
        if weights is None:
            weights = plain_cache[name] = load_model(name)()
        await asyncio.sleep(WORK_S)
        return {"model": name, "value": infer(weights)}
    assert guard.cache is not None
    async with guard.cache.use_async(
        name, load_model(name), size=MODEL_SIZE, timeout=WAIT_S
    ) as weights:
        await asyncio.sleep(WORK_S)
        return {"model": name, "value": infer(weights)}


@app.get("/stats")
async def stats() -> dict[str, Any]:
    return {
        "enabled": ENABLED,
        "budget": BUDGET,
        "rss": psutil.Process().memory_info().rss,
        "cache": None if guard.cache is None else guard.cache.stats.to_dict(),
        "ledger": guard.ledger.status(),
        "plain_cache_models": len(plain_cache),
    }
