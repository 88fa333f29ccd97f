"""The agent's fast paths (``server/fastagent.py``: its poll and its batches
of reports) answer as the framework's routes do: the same status, body bytes
and headers for any query or body, valid or not, whoever asks; and a task's
exit reported either way leaves the same rows."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.types import Scope

from apportion.server.app import create_app
from apportion.server.fastagent import agent_call
from apportion.service.settings import Settings
from fast_support import Answer, ask_entry, framework_entry

TOKEN = "fast-agent-admin-token-0123456789"
NODE = "n1"
REGISTER = json.dumps({"node": {"name": NODE, "resources": {"cpu": "8", "memory": "16Gi"}},
                       "agent": {"id": "agent-1", "heartbeat_s": 5.0}}).encode()
JOB = json.dumps({"command": ["true"], "resources": {"cpu": "1"}}).encode()
JSON = {"content-type": "application/json"}
POLL = f"/api/v1/agents/{NODE}/assignments"
REPORTS = f"/api/v1/agents/{NODE}/reports"
Ask = Callable[[str, str, bytes, dict[str, str]], Awaitable[Answer]]


async def _with_both(tmp: Path, run: Callable[[Ask, Ask, FastAPI], Awaitable[None]]) -> None:
    """``run`` with two ways to ask one server: its own entry (fast paths
    included) and the framework's stack behind the edge alone."""
    app = create_app(Settings(data_dir=tmp, database_url=None, admin_token=TOKEN,
                              config_file=None))

    def asker(entry: Any) -> Ask:
        async def ask(method: str, path: str, body: bytes, headers: dict[str, str]) -> Answer:
            return await ask_entry(entry, TOKEN, method, path, body, headers)
        return ask

    async with app.router.lifespan_context(app):
        registered = await asker(app)("POST", "/api/v1/agents/register", REGISTER, JSON)
        assert registered[0] == 200, registered
        await run(asker(app), asker(framework_entry(app)), app)


def _alike(fast: Answer, slow: Answer, blank: Callable[[bytes], bytes] = lambda b: b) -> None:
    assert fast[0] == slow[0], (fast, slow)
    assert blank(fast[1]) == blank(slow[1]), (fast, slow)
    for answer in (fast, slow):
        assert int(answer[2].pop("content-length")) == len(answer[1])
    assert fast[2] == slow[2]


Case = tuple[str, str, bytes, dict[str, str]]


def _both(tmp: Path, cases: Callable[[FastAPI], list[Case]],
          token: Callable[[FastAPI], str] | None = None) -> list[int]:
    """Each case asked both ways, fast first; their statuses."""
    answers: list[tuple[Any, Any]] = []

    async def run(fast: Ask, slow: Ask, app: FastAPI) -> None:
        extra = {} if token is None else {"authorization": f"Bearer {token(app)}"}
        for method, path, body, headers in cases(app):
            both = (fast(method, path, body, {**headers, **extra}),
                    slow(method, path, body, {**headers, **extra}))
            # A bound on each answer: a test that fails, not one that hangs.
            answers.append(tuple([await asyncio.wait_for(a, 60) for a in both]))

    asyncio.run(_with_both(tmp, run))  # compared once the server has stopped
    for a, b in answers:
        _alike(a, b)
    return [a[0] for a, _ in answers]


def _epoch(app: FastAPI) -> str:
    return str(app.state.ctx.agents.epoch)


def _polls(queries: list[str], headers: dict[str, str] | None = None
           ) -> Callable[[FastAPI], list[Case]]:
    def cases(app: FastAPI) -> list[Case]:
        return [("GET", POLL + q.replace("EPOCH", _epoch(app)), b"", headers or {})
                for q in queries]
    return cases


def test_plain_and_odd_polls_are_answered_alike(tmp_path: Path) -> None:
    queries = [
        "", "?after=-1&wait=0", "?after=0&wait=0.0&epoch=EPOCH", "?after=5&epoch=EPOCH&wait=0",
        "?wait=0&after=3&epoch=other", "?after=-2", "?after=4611686018427387905",
        "?after=4611686018427387904&epoch=EPOCH", "?after=+1", "?after=01", "?after=abc",
        "?after=", "?wait=121", "?wait=1e1&epoch=x", "?wait=-0", "?wait=nan", "?epoch=" + "e" * 65,
        "?epoch=" + "e" * 64, "?epoch=%41", "?epoch=", "?after=1&after=2", "?bogus=1",
        "?after=1&", "?after", "?wait=0.0000001&epoch=x",
    ]
    statuses = _both(tmp_path, _polls(queries))
    assert statuses == [200, 200, 200, 200, 200, 422, 422, 200, 200, 200, 422, 422, 422, 200,
                        200, 422, 422, 200, 200, 200, 200, 200, 200, 422, 200]
    # A poll with a body goes the normal way; so does one that is not a GET.
    assert _both(tmp_path / "b", lambda app: [
        ("GET", POLL, b"{}", JSON), ("POST", POLL, b"", {}),
        ("GET", "/api/v1/agents/checkpoints/assignments", b"", {}),
        ("GET", "/api/v1/agents/n2/assignments", b"", {}),
        ("GET", POLL + "/", b"", {})]) == [200, 405, 404, 404, 307]


def _scope(method: str, path: str, query: bytes = b"",
           headers: tuple[tuple[bytes, bytes], ...] = ()) -> Scope:
    return {"type": "http", "method": method, "path": path, "query_string": query,
            "headers": list(headers)}


def test_the_fast_paths_take_the_agents_own_requests_and_no_others() -> None:
    """What the agent sends is served fast (so the comparisons above compare
    two paths); anything the agent would not send is left to the framework."""
    assert agent_call(_scope("POST", REPORTS)) == (NODE, None)
    assert agent_call(_scope("GET", POLL)) == (NODE, (-1, None, 0.0))
    assert agent_call(_scope("GET", POLL, b"after=12&wait=25.0&epoch=3f9a")) == (
        NODE, (12, "3f9a", 25.0))
    for query in (b"after=+1", b"wait=1e1", b"epoch=%41", b"after=1&after=1", b"x=1", b"after"):
        assert agent_call(_scope("GET", POLL, query)) is None, query
    assert agent_call(_scope("GET", POLL, headers=((b"content-length", b"0"),))) is None
    for method, path in (("GET", REPORTS), ("POST", POLL), ("GET", POLL + "/"),
                         ("GET", "/api/v1/agents/checkpoints/assignments"),
                         ("POST", "/api/v1/agents/register/reports")):
        assert agent_call(_scope(method, path)) is None, (method, path)


def test_callers_the_routes_refuse_are_refused_alike(tmp_path: Path) -> None:
    def other_agent(app: FastAPI) -> str:
        return str(app.state.ctx.auth.create("node-x", "agent")[0])

    cases = [("GET", POLL + "?after=-1", b"", {}),
             ("POST", REPORTS, b'{"reports": [{"task": "t-1", "state": "running"}]}', JSON)]
    assert _both(tmp_path, lambda _: cases, token=other_agent) == [403, 403]
    assert _both(tmp_path / "b", lambda _: cases, token=lambda _: "wrong") == [401, 401]


def _reports(bodies: list[bytes], headers: dict[str, str] = JSON
             ) -> Callable[[FastAPI], list[Case]]:
    return lambda _: [("POST", REPORTS, body, headers) for body in bodies]


def test_plain_and_odd_report_bodies_are_answered_alike(tmp_path: Path) -> None:
    one = {"task": "t-nope", "state": "exited", "exit_code": 0,
           "times": {"started_at": 1.5, "exited_at": 2.0},
           "usage": {"memory": 1048576.0, "cpu_seconds": 0.001}}
    bodies = [json.dumps({"reports": [one]}).encode(),
              json.dumps({"reports": [one, {**one, "task": "t-2", "state": "running"}]}).encode(),
              json.dumps({"reports": []}).encode(),
              json.dumps({"reports": [{**one, "state": "gone"}]}).encode(),
              json.dumps({"reports": [{**one, "bogus": 1}]}).encode(),
              json.dumps({"reports": [{**one, "exit_code": 1.5}]}).encode(),
              json.dumps({"reports": [{**one, "task": "a/b"}]}).encode(),
              b"", b"{not json", b"\xff\xfe", b"[1]", b'{"reports": [{"task": "t", "state": '
              b'"running", "usage": {"memory": NaN}}]}']
    statuses = _both(tmp_path, _reports(bodies))
    assert statuses == [200, 200, 422, 422, 422, 422, 422, 422, 400, 400, 422, 422], statuses
    labels = _both(tmp_path / "b", _reports(bodies[:1] * 4, {}) )
    assert labels == [200] * 4
    kinds = [{"content-type": k} for k in ("text/plain", "application/xml",
                                           "application/json; charset=utf-8")]
    assert [_both(tmp_path / f"c{i}", _reports(bodies[:1], k))[0]
            for i, k in enumerate(kinds)] == [200, 422, 200]


_ITEM = st.fixed_dictionaries(
    {"task": st.sampled_from(["t-1", "t-2", "", "x" * 65, "ok_task-9"]),
     "state": st.sampled_from(["starting", "running", "exited", "lost"])},
    optional={
        "exit_code": st.one_of(st.integers(-300, 300), st.none(), st.just("1")),
        "signalled": st.booleans(), "memory_exceeded": st.booleans(), "lost": st.booleans(),
        "reason": st.one_of(st.text(max_size=8), st.none()),
        "checkpoint": st.booleans(),
        "times": st.dictionaries(st.sampled_from(["started_at", "exited_at", "x" * 33]),
                                 st.floats(-1, 2e11, allow_nan=False), max_size=2),
        "usage": st.dictionaries(st.sampled_from(["memory", "cpu_seconds", "Bad"]),
                                 st.one_of(st.floats(0, 1e19, allow_nan=False),
                                           st.integers(0, 10)), max_size=2),
    })


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(_ITEM, min_size=1, max_size=3), min_size=10, max_size=10),
       st.lists(st.tuples(st.sampled_from(["after", "wait", "epoch", "x"]),
                          st.sampled_from(["-1", "0", "7", "1.5", "120", "120.5", "EPOCH", ""])),
                max_size=3))
def test_any_report_batch_and_poll_is_answered_alike(
        tmp_path_factory: Any, batches: list[list[dict[str, Any]]],
        query: list[tuple[str, str]]) -> None:
    """Reports of tasks the server does not know: each answered with its own
    error (or the batch refused), neither way changing anything."""
    bodies = [json.dumps({"reports": b}).encode() for b in batches]
    poll = "?" + "&".join(f"{k}={v}" for k, v in query)
    _both(tmp_path_factory.mktemp("any"),
          lambda app: [*_reports(bodies)(app), *_polls([poll])(app)])


def test_a_task_ended_either_way_answers_and_leaves_the_same_rows(tmp_path: Path) -> None:
    """Two jobs placed and delivered by polls asked both ways; each one's exit
    reported one way: the same answers, and the same task, allocation, job
    and event rows (less ids and times)."""
    answers: list[Answer] = []
    rows: dict[str, list[tuple[Any, ...]]] = {}
    delivered: list[tuple[str, str]] = []

    async def run(fast: Ask, slow: Ask, app: FastAPI) -> None:
        jobs = [json.loads((await fast("POST", "/api/v1/jobs", JOB, JSON))[1])["id"]
                for _ in range(2)]
        tasks: dict[str, str] = {}
        for _ in range(30):  # a bound: each held poll waits at most 2 s
            polls = [await ask("GET", POLL + f"?after=-1&wait=0&epoch={_epoch(app)}", b"", {})
                     for ask in (fast, slow)]
            _alike(*polls)
            state = json.loads(polls[0][1])
            tasks = {a["job_id"]: a["id"] for a in state["tasks"]}
            if len(tasks) == 2:
                break
            seq = state["seq"]  # held until the node's desired state changes
            await fast("GET", POLL + f"?after={seq}&wait=2&epoch={_epoch(app)}", b"", {})
        assert set(tasks) == set(jobs)
        for ask, job in zip((fast, slow), jobs, strict=True):
            body = {"reports": [{"task": tasks[job], "state": "exited", "exit_code": 0,
                                 "times": {"started_at": 1.0e9, "exited_at": 1.0e9 + 0.5},
                                 "usage": {"memory": 1048576.0, "cpu_seconds": 0.25}}]}
            answers.append(await ask("POST", REPORTS, json.dumps(body).encode(), JSON))
        for job in jobs:
            rows[job] = _rows(app, job, tasks[job])
            delivered.append((job, tasks[job]))

    asyncio.run(_with_both(tmp_path, run))
    fast_answer, slow_answer = answers
    ids = [task.encode() for _, task in delivered]
    _alike(fast_answer, slow_answer, lambda b: b.replace(ids[0], b"T").replace(ids[1], b"T"))
    assert json.loads(fast_answer[1])["answers"][0]["state"] == "succeeded"
    first, second = rows.values()
    for a, b in zip(first, second, strict=True):
        assert a == b, (a, b)
    assert len(first) > 5


_TIME = re.compile(r"\d{4}-\d\d-\d\dT[\d:.]+Z?|^\d{9,}\.?\d*$")


def _rows(app: FastAPI, job: str, task: str) -> list[tuple[Any, ...]]:
    """Every row naming the job or its task, each value with ids and times blanked."""
    out: list[tuple[Any, ...]] = []
    with app.state.ctx.uow.engine.connect() as conn:
        for table in sa.inspect(conn).get_table_names():
            rel = sa.Table(table, sa.MetaData(), autoload_with=conn)
            for row in conn.execute(sa.select(rel)):
                text = repr(tuple(row))
                if job in text or task in text:
                    out.append((table, *("N" if key in ("id", "seq") else _blank(v, job, task)
                                         for key, v in row._mapping.items())))
    return sorted(out, key=repr)


def _blank(value: Any, job: str, task: str) -> Any:
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", "replace")
    if isinstance(value, (dict, list)):
        value = json.dumps(value, sort_keys=True)
    if isinstance(value, str):
        value = value.replace(job, "J").replace(task, "T")
        value = re.sub(r"\b[0-9]{10}\.?[0-9]*", "T", value)  # a time in JSON
        return _TIME.sub("T", re.sub(r"\b(([a-z]+-)?[0-9a-f]{12}|[0-9a-f]{32})\b", "I", value))
    if isinstance(value, float) and value > 1e9:
        return "T"
    if isinstance(value, int) and value > 10**9:
        return "N"  # a row id or a time
    return value
