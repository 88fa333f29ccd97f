from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.types import Scope

from apportion.guard import Guard, InsufficientHostResources
from apportion.guard.asgi import GuardMiddleware, install

MIB = 2**20


def get(app: Any, *paths: str) -> list[httpx.Response]:
    """GET each path in turn through the ASGI app, in process."""

    async def main() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return [await client.get(p) for p in paths]

    return asyncio.run(main())


def make_app(**kwargs: Any) -> tuple[FastAPI, Guard]:
    guard = Guard.create(
        capacity={"memory": "100Mi"},
        profiles={"request": {"memory": "40Mi"}},
        environ={},
        nvml=None,
    )
    app = FastAPI()

    @app.get("/work")
    async def work() -> dict[str, int]:
        return {"free": guard.ledger.free()["memory"]}

    install(app, guard, **kwargs)
    return app, guard


def test_requests_hold_their_profile_while_handled() -> None:
    app, guard = make_app(request_profile="request")
    [resp] = get(app, "/work")
    assert resp.status_code == 200
    assert resp.json() == {"free": 60 * MIB}
    assert guard.ledger.free() == {"memory": 100 * MIB}


def test_503_with_retry_after_when_no_room() -> None:
    app, guard = make_app(request_profile="request", retry_after=7)
    with guard.reserve({"memory": "80Mi"}):
        resp, status = get(app, "/work", "/guard/status")
    assert resp.status_code == 503
    assert resp.headers["retry-after"] == "7"
    assert resp.json() == {
        "error": "insufficient_resources",
        "message": "not enough resources for request: memory: 20Mi available, 40Mi required",
        "what": "request",
        "shortages": [{
            "resource": "memory", "available": "20Mi", "required": "40Mi",
            "available_base": 20 * MIB, "required_base": 40 * MIB,
        }],
        "retry_after": 7,
    }
    assert status.status_code == 200  # the guard's own endpoints stay up
    assert status.json()["ledger"]["refusals"] == 1


def test_concurrent_requests_beyond_capacity_get_503() -> None:
    guard = Guard.create(
        capacity={"memory": "100Mi"}, profiles={"request": {"memory": "40Mi"}}, environ={},
        nvml=None,
    )
    inner = FastAPI()
    gate = asyncio.Event()

    @inner.get("/slow")
    async def slow() -> dict[str, bool]:
        await gate.wait()
        return {"ok": True}

    middleware = GuardMiddleware(inner, guard, requirement="request")

    async def main() -> list[int]:
        transport = httpx.ASGITransport(app=middleware)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            async def opener() -> None:
                while middleware.rejected < 3:
                    await asyncio.sleep(0.001)
                gate.set()

            results = await asyncio.gather(
                *(client.get("/slow") for _ in range(5)), opener()
            )
        return sorted(r.status_code for r in results if r is not None)

    assert asyncio.run(main()) == [200, 200, 503, 503, 503]
    assert middleware.stats() == {"admitted": 2, "rejected": 3}
    assert guard.ledger.free() == {"memory": 100 * MIB}


def test_per_route_requirement_and_pass_through() -> None:
    def per_route(scope: Scope) -> object | None:
        return {"memory": "90Mi"} if scope["path"] == "/work" else None

    app, guard = make_app(request_profile=per_route)

    @app.get("/free")
    async def free() -> dict[str, bool]:
        return {"ok": True}

    with guard.reserve({"memory": "20Mi"}):
        assert [r.status_code for r in get(app, "/work", "/free")] == [503, 200]


def test_guard_endpoints() -> None:
    app, guard = make_app()
    assert guard.monitor is not None
    guard.monitor.sample_now()
    paths = ["/guard/status", "/guard/report", "/guard/alerts", "/guard/history?limit=5"]
    status, report, alerts, history = (r.json() for r in get(app, *paths))
    [hints] = get(app, "/guard/suggestions")
    assert status["ledger"]["capacity"] == {"memory": "100Mi"}
    assert status["health"] in ("healthy", "moderate", "warning", "critical")
    assert report["profiles"] == {"request": {"memory": "40Mi"}}
    assert set(alerts) == {"levels", "alerts"}
    assert len(history["samples"]) == 1
    assert hints.status_code == 200


def test_suggestions_speak_of_refusals_and_thrashing() -> None:
    guard = Guard.create(capacity={"memory": "10Mi"}, environ={}, nvml=None, monitor=False)
    assert guard.cache is not None
    guard.cache.pressure = lambda: 0.0
    for i in range(24):  # four 6 MiB models in 10 MiB, round robin: every look-up misses
        guard.cache.get_or_load(f"m{i % 4}", lambda: bytearray(6 * MIB), size="6Mi")
    with pytest.raises(InsufficientHostResources):
        guard.reserve({"memory": "20Mi"}).acquire()
    assert guard.suggestions() == [
        {
            "severity": "warning",
            "topic": "ledger",
            "message": "1 of 25 reservations were refused for lack of resources; raise the "
            "capacity (or the task's allocation), lower concurrency, or make requests "
            "declare smaller profiles",
        },
        {
            "severity": "warning",
            "topic": "cache",
            "message": "model cache hit rate is 0% with 23 evictions: the working set does "
            "not fit; give the cache more memory or send each model's requests to fewer "
            "processes",
        },
    ]
