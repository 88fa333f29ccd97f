"""The submission fast path (``server/fastsubmit.py``) answers as the
framework's route does: the same status, body bytes and headers for any body,
valid or not (a job's id and time differ, being a new job's), whoever asks."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apportion.server.app import create_app
from apportion.service.settings import Settings
from fast_support import ask_entry, framework_entry

TOKEN = "fast-submit-admin-token-0123456789"
JSON = {"content-type": "application/json"}
Ask = Callable[[bytes, dict[str, str]], Awaitable[tuple[int, bytes, dict[str, str]]]]

_ID = re.compile(rb'"(id|job)":"j-[0-9a-f]+"')
_TIME = re.compile(rb'"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z"')


def _same_but_new(body: bytes) -> bytes:
    """A new job's own id and submission time, blanked."""
    return _TIME.sub(b'"T"', _ID.sub(rb'"\1":"I"', body))


async def _with_both(tmp: Path, run: Callable[[Ask, Ask, FastAPI], Awaitable[None]]) -> None:
    """``run`` with two ways to ask one server: its own entry (fast path
    included) and the framework's stack behind the edge alone."""
    app = create_app(Settings(data_dir=tmp, database_url=None, admin_token=TOKEN,
                              config_file=None))

    def asker(entry: Any, path: str = "/api/v1/jobs") -> Ask:
        async def ask(body: bytes, headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
            return await ask_entry(entry, TOKEN, "POST", path, body, headers)
        return ask

    async with app.router.lifespan_context(app):
        node = await asker(app, "/api/v1/nodes")(NODE, JSON)
        assert node[0] == 201, node
        # Cordoned: jobs are taken (a node could hold them) but none starts,
        # so no cycle is placing work when the server stops.
        cordoned = await asker(app, "/api/v1/nodes/n1/cordon")(b"", {})
        assert cordoned[0] == 200, cordoned
        await run(asker(app), asker(framework_entry(app)), app)


def _alike(fast: tuple[int, bytes, dict[str, str]],
           slow: tuple[int, bytes, dict[str, str]]) -> None:
    assert fast[0] == slow[0], (fast, slow)
    assert _same_but_new(fast[1]) == _same_but_new(slow[1]), (fast, slow)
    for answer in (fast, slow):
        assert int(answer[2].pop("content-length")) == len(answer[1])
    assert fast[2] == slow[2]


def _both(tmp: Path, cases: list[tuple[bytes, dict[str, str]]],
          token: Callable[[FastAPI], str] | None = None) -> list[int]:
    """Each case asked both ways; their statuses."""
    answers: list[tuple[Any, Any]] = []

    async def run(fast: Ask, slow: Ask, app: FastAPI) -> None:
        extra = {} if token is None else {"authorization": f"Bearer {token(app)}"}
        for body, headers in cases:
            both = (fast(body, {**headers, **extra}), slow(body, {**headers, **extra}))
            # A bound on each answer: a test that fails, not one that hangs.
            answers.append(tuple([await asyncio.wait_for(a, 60) for a in both]))

    asyncio.run(_with_both(tmp, run))  # compared once the server has stopped
    for a, b in answers:
        _alike(a, b)
    return [a[0] for a, _ in answers]


NODE = json.dumps({"name": "n1", "resources": {"cpu": "8", "memory": "16Gi"}}).encode()
JOB = json.dumps({"command": ["true"], "resources": {"cpu": "1"}}).encode()


def test_plain_and_odd_bodies_are_answered_alike(tmp_path: Path) -> None:
    cases = [
        (JOB, JSON),
        (JOB, {"content-type": "application/json; charset=utf-8"}),
        (JOB, {"content-type": "text/plain"}),  # relabeled: read as JSON
        (JOB, {"content-type": "application/x-www-form-urlencoded"}),
        (JOB, {"content-type": "application/xml"}),  # not read as JSON: 422
        (JOB, {}),
        (b"", JSON),
        (b"{not json", JSON),
        (b"\xff\xfe", JSON),
        (b"[1, 2]", JSON),
        (json.dumps({"command": ["true"], "bogus": 1}).encode(), JSON),
        (json.dumps({"resources": {"cpu": "lots"}}).encode(), JSON),
        (json.dumps({"resources": {"cpu": "1"}, "constraints": ["=="]}).encode(), JSON),
        (json.dumps({"resources": {"cpu": "1"}, "deadline": "soon"}).encode(), JSON),
        (json.dumps({"name": "é", "resources": {"cpu": "1"}, "array": 3,
                     "labels": {"a": "b"}, "restart": {"policy": "on-failure"}}).encode(),
         JSON),
    ]
    statuses = _both(tmp_path, cases)
    assert statuses == [201, 201, 201, 201, 422, 201, 422, 400, 400, 422, 422, 422, 422, 422,
                        201]


def test_callers_the_route_refuses_are_refused_alike(tmp_path: Path) -> None:
    def agent(app: FastAPI) -> str:
        return str(app.state.ctx.auth.create("node-x", "agent")[0])

    statuses = _both(tmp_path, [(JOB, JSON)], token=agent)
    assert statuses == [403]
    assert _both(tmp_path / "b", [(JOB, JSON)], token=lambda _: "wrong") == [401]


_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "name": st.one_of(st.text(max_size=6), st.none(), st.integers()),
    "queue": st.sampled_from(["default", "no such", "q1"]),
    "priority": st.one_of(st.integers(-2_000_000, 2_000_000), st.just("high")),
    "count": st.integers(0, 3),
    "array": st.one_of(st.none(), st.integers(0, 3)),
    "tasks": st.sampled_from([[{"resources": {"cpu": "1"}, "count": 2}], [], None]),
    "command": st.sampled_from([["true"], [], None, "true"]),
    "deadline": st.one_of(st.none(), st.floats(0, 2e9), st.just("2030-01-01T00:00:00Z"),
                          st.just("soon")),
    "runtime_estimate": st.one_of(st.just("1h"), st.just("x"), st.floats(0.5, 10)),
    "constraints": st.sampled_from([[], ["type=gpu"], ["=="]]),
    "restart": st.sampled_from([None, {"policy": "on-failure", "max_retries": 2},
                                {"policy": "x"}]),
    "stop_grace": st.sampled_from(["5s", "never", 3]),
    "gang": st.booleans(),
    "bogus": st.integers(),
}


_RESOURCES = st.sampled_from([{"cpu": "1"}, {"cpu": "500m", "memory": "1Gi"}, {"cpu": "2"},
                              "auto", {"cpu": "lots"}, {"gpu": "1"}, {}])


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.function_scoped_fixture])
@given(st.lists(st.fixed_dictionaries({"resources": _RESOURCES}, optional=_VALUES),
                min_size=15, max_size=15))
def test_any_body_is_answered_alike(tmp_path_factory: Any, bodies: list[dict[str, Any]]
                                    ) -> None:
    _both(tmp_path_factory.mktemp("any"), [(json.dumps(b).encode(), JSON) for b in bodies])
