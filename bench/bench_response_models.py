"""What FastAPI spends answering the hot dict routes (validate the answer,
dump it to JSON), per answer.

Issue 15 documented every route's answer with a model, through
``server/responses.Documented``: the published schema shows the model while
the route still answers ``dict[str, Any]``, validated as before. This
measures that: run it with ``PYTHONPATH`` at the code before the change and
after, and compare. (The grant, release and assignments routes answer bytes
they build themselves and take no part in this.)

    PYTHONPATH=src .venv/bin/python bench/bench_response_models.py
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from common import write_result
from fastapi.routing import APIRoute, serialize_response

from apportion.server.app import create_app
from apportion.server.routes import agents, jobs
from apportion.service.settings import Settings

ANSWERS: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/api/v1/agents/{node}/heartbeat"): {
        "node_state": "ready",
        "epoch": "3f9a0c1b2d4e",
        "seq": 12,
        "registered": True,
    },
    ("POST", "/api/v1/agents/{node}/tasks/{task_id}/report"): {
        "known": True,
        "active": False,
        "state": "succeeded",
        "reason": None,
    },
    ("POST", "/api/v1/jobs"): {
        "id": "j-1",
        "name": "x",
        "owner": "a",
        "queue": "default",
        "priority": 0,
        "state": "pending",
        "spec": {"resources": {"cpu": "1"}, "count": 1},
        "submitted_at": "2026-01-05T10:00:00Z",
        "started_at": None,
        "ended_at": None,
        "reason": None,
        "exit_code": None,
        "attempts": 0,
        "preemptions": 0,
        "array": None,
        "task_counts": {"total": 1, "pending": 1, "active": 0, "succeeded": 0, "failed": 0},
        "tasks": [],
        "tasks_total": 0,
    },
}


async def measure(n: int = 50_000, repeats: int = 5) -> dict[str, float]:
    create_app(Settings(data_dir=Path(tempfile.gettempdir()) / "bench-response-models"))
    routes = {
        (m, r.path_format): r
        for r in [*agents.router.routes, *jobs.router.routes]
        if isinstance(r, APIRoute)
        for m in r.methods
    }
    out = {}
    for key, body in ANSWERS.items():
        field = routes[key].response_field
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            for _ in range(n):
                await serialize_response(field=field, response_content=body, dump_json=True)
            best = min(best, (time.perf_counter() - started) / n)
        out[f"{key[0]} {key[1]}"] = round(best * 1e6, 2)
        print(f"{key[0]} {key[1]:45s} {best * 1e6:6.2f} us per answer (best of {repeats})")
    return out


if __name__ == "__main__":
    write_result("response_models", {"us_per_answer": asyncio.run(measure())})
