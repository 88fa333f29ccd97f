"""Schemathesis against the OpenAPI schema the live server publishes: whatever
it sends, valid or not (positive and negative generation, explicit examples
and fuzzing), every answer is one the schema documents: no 5xx, a documented
status code, the documented content type, a body that matches the documented
response model (``server/responses``) and the documented headers; and every
request that breaks the schema on purpose is refused (4xx).

One server for the module, seeded with nodes, allocations, an agent session,
jobs (one running a command, so assignments carry tasks) and a queue; hooks
often swap generated node names, allocation, job and task ids for real ones
and mix grants that can succeed into the generated bodies, so the paths past
"not found" (grants, updates, releases, reports, deletes) are fuzzed too.
Long polls and forced releases are asked not to wait, so the run is quick.

The schema is loaded from the app object at import (``from_fixture`` of
schemathesis 4 breaks on pytest 9: it writes ``request.node._nodeid``); a
test checks it is exactly the document the live server serves.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    allow_header_conformance,
    content_type_conformance,
    ignored_auth,
    missing_required_header,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)
from schemathesis.config import SchemathesisConfig

from e2e.cluster import wait_for
from support import ServerProcess

SEED_NODES: list[dict[str, Any]] = [
    {
        "name": "n1",
        "resources": {"cpu": "64", "memory": "256Gi", "gpu": 4},
        "devices": {"gpu": [{"id": str(i), "model": "H100", "memory": "80Gi"} for i in range(4)]},
        "labels": {"facility": "texas-1", "type": "gpu", "gpu.model": "H100"},
    },
    {
        "name": "cpu-1",
        "resources": {"cpu": "128", "memory": "512Gi"},
        "labels": {"facility": "oslo-2", "type": "cpu"},
    },
]
_ALLOC_IDS: list[str] = []
"""Seeded allocation ids (two active, one released), filled by ``live``."""
_JOB_IDS: list[str] = []
"""Seeded jobs: one running a command on n1, one lease job."""
_TASK_IDS: list[str] = []
"""The seeded jobs' task ids."""
_WAITING: list[str] = []
"""A job waiting for its queue's quota (what explain answers for)."""
_LIVE_TASK: list[str] = []
"""A task left running for the log and checkpoint uploads (no report or
cancel is aimed at it)."""
_CHECKPOINTED: list[str] = []
"""A task that exited leaving a checkpoint (what GET checkpoints serves)."""
AGENT = {"id": "agent-n1", "version": "test", "heartbeat_s": 10.0}
_AGENT_TOKEN: list[str] = []
"""n1's own agent token: every other agent-protocol request uses it, so the
agent role's answers (its own node, 403 for another) are checked too."""
_AGENT_TURN = itertools.count()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, list[str]]]:
    proc = ServerProcess(tmp_path_factory.mktemp("schemathesis")).start()
    try:
        with proc.client() as c:
            for node in SEED_NODES:
                assert c.post("/api/v1/nodes", json=node).status_code == 201
            for i in range(4):
                victim = {"name": f"gone-{i}", "resources": {"cpu": "4", "memory": "8Gi"}}
                assert c.post("/api/v1/nodes", json=victim).status_code == 201
                ask = {"resources": {"cpu": "1"}, "node": f"gone-{i}"}
                assert c.post("/api/v1/allocations", json=ask).status_code == 201
            ids = []
            for ask in ({"cpu": "1", "gpu": 1}, {"cpu": "2", "memory": "1Gi"}, {"cpu": "500m"}):
                r = c.post("/api/v1/allocations", json={"resources": ask, "owner": "alice"})
                assert r.status_code == 201
                ids.append(r.json()["id"])
            assert c.delete(f"/api/v1/allocations/{ids[-1]}").status_code == 200
            _ALLOC_IDS[:] = ids
            _seed_work(c)
        yield proc, ids
    finally:
        proc.stop()


def _seed_work(c: httpx.Client) -> None:
    """An agent session on n1, queues, jobs running a command there (so its
    assignments carry tasks), a lease job, and a job its quota holds back."""
    r = c.post("/api/v1/agents/register", json={"node": SEED_NODES[0], "agent": AGENT})
    assert r.status_code == 200, r.text
    r = c.post("/api/v1/tokens", json={"name": "n1", "role": "agent"})
    assert r.status_code == 201, r.text
    _AGENT_TOKEN[:] = [r.json()["token"]]
    for queue, cpu in (("batch", "8"), ("tight", "1")):
        r = c.post("/api/v1/queues", json={"name": queue, "quota": {"cpu": cpu}})
        assert r.status_code == 201, r.text
    run = {"resources": {"cpu": "1"}, "command": ["sleep", "600"]}
    lease = {"resources": {"cpu": "1"}, "queue": "tight"}
    ids = [
        c.post("/api/v1/jobs", json=job).json()["id"]
        for job in (
            {**run, "name": "fuzz-run"},
            {**lease, "name": "fuzz-lease", "queue": "batch"},
            {**run, "name": "fuzz-live"},
            {**lease, "name": "quota-holder"},
            {**run, "name": "fuzz-checkpoint"},
        )
    ]
    _JOB_IDS[:], live = ids[:2], ids[2]

    def tasks(job_id: str) -> list[str]:
        return [t["id"] for t in c.get(f"/api/v1/jobs/{job_id}").json()["tasks"]]

    _TASK_IDS[:] = wait_for(
        "the seeded jobs' tasks",
        lambda: [t for j in _JOB_IDS for t in tasks(j)] if all(tasks(j) for j in _JOB_IDS) else [],
    )
    _LIVE_TASK[:] = wait_for("the live job's task", lambda: tasks(live))
    wait_for("the quota holder's task", lambda: tasks(ids[3]))
    _CHECKPOINTED[:] = wait_for("the checkpointed job's task", lambda: tasks(ids[4]))
    on_n1 = f"/api/v1/agents/n1/tasks/{_CHECKPOINTED[0]}"
    assert c.put(on_n1 + "/checkpoint", content=b"state").status_code == 200
    exited = {"state": "exited", "exit_code": 0, "checkpoint": True}
    assert c.post(on_n1 + "/report", json=exited).status_code == 200
    _WAITING[:] = [c.post("/api/v1/jobs", json={**lease, "name": "quota-waiter"}).json()["id"]]
    explained = wait_for(
        "the waiting job's explanation",
        lambda: c.get(f"/api/v1/jobs/{_WAITING[0]}/explain").status_code == 200,
    )
    assert explained


def _published_schema() -> dict[str, Any]:
    """The document /openapi.json serves, built without a store (``create_app``
    opens the store only when it starts serving)."""
    from apportion.server.app import create_app
    from apportion.service.settings import Settings

    unused = Path(tempfile.gettempdir()) / "apportion-schemathesis-unused"
    return create_app(Settings(data_dir=unused)).openapi()


MAX_EXAMPLES = 50
"""Per operation and phase; the module runs in about a minute on two busy cores."""
OPENAPI = _published_schema()
_config = SchemathesisConfig()
_config.projects.default.generation.update(max_examples=MAX_EXAMPLES, database="none")
schema = schemathesis.openapi.from_dict(OPENAPI, config=_config)
_NODE_NAMES = st.sampled_from([n["name"] for n in SEED_NODES])
_VICTIMS = st.sampled_from([f"gone-{i}" for i in range(4)])
_ASKS = st.sampled_from(
    [
        {"cpu": "1"},
        {"cpu": "500m", "memory": "1Gi"},
        {"gpu": 1},
        {"cpu": "2", "memory": "4Gi", "gpu": 1},
        {"cpu": "100000"},
        {"fpga": 1},
    ]
)
_GRANTS = st.fixed_dictionaries(
    {"resources": _ASKS},
    optional={
        "node": st.sampled_from(["n1", "cpu-1", "gone-0"]),
        "owner": st.sampled_from(["alice", "bob"]),
        "labels": st.just({"job": "fuzz"}),
    },
)


_JOBS = st.sampled_from(
    [
        {"resources": {"cpu": "100m"}},
        {"name": "fuzz-array", "resources": {"cpu": "100m"}, "array": 2, "queue": "batch"},
        {"name": "fuzz-cmd", "resources": {"cpu": "100m"}, "command": ["true"], "priority": 5},
        {"tasks": [{"resources": {"cpu": "100m"}, "count": 2}], "gang": True},
        {"resources": {"cpu": "1"}, "constraints": ["facility=mars"]},
    ]
)
_METRICS = st.sampled_from(["utilization", "queue_length", "queue_wait_seconds"])


def _mostly(real: st.SearchStrategy[Any], generated: Any) -> st.SearchStrategy[Any]:
    """Three times in four the real value, else what schemathesis generated."""
    return st.integers(0, 3).flatmap(lambda i: real if i else st.just(generated))


@schema.hook
def flatmap_path_parameters(context: Any, path_parameters: Any) -> st.SearchStrategy[Any]:
    """Often swap a generated node name or allocation id for a real one;
    deletes aim at nodes seeded to be deleted, so the rest stay."""
    if not isinstance(path_parameters, dict):
        return st.just(path_parameters)
    if "name" in path_parameters and context.operation.path.startswith("/api/v1/nodes/"):
        real = _VICTIMS if context.operation.method.upper() == "DELETE" else _NODE_NAMES
        return _mostly(real.map(lambda n: {"name": n}), path_parameters)
    swaps: dict[str, st.SearchStrategy[Any]] = {}
    if "node" in path_parameters:
        swaps["node"] = st.just("n1")
    if "alloc_id" in path_parameters:
        swaps["alloc_id"] = st.integers(0, 2).map(lambda i: _ALLOC_IDS[i])
    path = context.operation.path
    if "job_id" in path_parameters:
        jobs = _WAITING if path.endswith("/explain") else _JOB_IDS
        swaps["job_id"] = st.sampled_from(jobs)
    if "task_id" in path_parameters:
        live = "/logs/" in path or path.endswith("/checkpoint")
        left = path.startswith("/api/v1/agents/checkpoints/")
        swaps["task_id"] = st.sampled_from(
            _CHECKPOINTED if left else _LIVE_TASK if live else _TASK_IDS
        )
    if "stream" in path_parameters:
        swaps["stream"] = st.sampled_from(["stdout", "stderr"])
    if not swaps:
        return st.just(path_parameters)
    return _mostly(
        st.fixed_dictionaries({**{k: st.just(v) for k, v in path_parameters.items()}, **swaps}),
        path_parameters,
    )


@schema.hook
def flatmap_query(context: Any, query: Any) -> st.SearchStrategy[Any]:
    """History asks for a metric by name: mostly one that exists."""
    if context.operation.path != "/api/v1/history" or not isinstance(query, dict):
        return st.just(query)
    return _mostly(_METRICS.map(lambda m: {**query, "metric": m}), query)


@schema.hook
def flatmap_body(context: Any, body: Any) -> st.SearchStrategy[Any]:
    """Mix grants that can succeed (or fail for want of capacity) into the
    generated allocation bodies."""
    operation = context.operation
    if operation.method.upper() == "POST" and operation.path == "/api/v1/allocations":
        return _mostly(_GRANTS, body)
    if operation.method.upper() == "POST" and operation.path == "/api/v1/jobs":
        return _mostly(_JOBS, body)
    if operation.path == "/api/v1/agents/{node}/heartbeat":
        return _mostly(st.just({"agent_id": AGENT["id"], "usage": {"cpu": 0.5}}), body)
    if operation.path == "/api/v1/agents/{node}/tasks/{task_id}/report":
        return _mostly(
            st.sampled_from([{"state": "running"}, {"state": "exited", "exit_code": 0}]), body
        )
    return st.just(body)


def test_the_fuzzed_schema_is_the_one_the_server_publishes(
    live: tuple[ServerProcess, list[str]],
) -> None:
    proc, _ = live
    served = httpx.get(proc.url + "/openapi.json", timeout=10).json()
    assert sorted(served["paths"]) == sorted(OPENAPI["paths"])
    assert served == OPENAPI
    fuzzed = {(op.ok().method.upper(), op.ok().path) for op in schema.get_all_operations()}
    assert {
        ("GET", "/healthz"),
        ("GET", "/api/v1/nodes"),
        ("POST", "/api/v1/nodes"),
        ("GET", "/api/v1/nodes/{name}"),
        ("PUT", "/api/v1/nodes/{name}"),
        ("DELETE", "/api/v1/nodes/{name}"),
        ("GET", "/api/v1/allocations"),
        ("POST", "/api/v1/allocations"),
        ("GET", "/api/v1/allocations/{alloc_id}"),
        ("DELETE", "/api/v1/allocations/{alloc_id}"),
        ("GET", "/api/v1/capacity/summary"),
        ("POST", "/api/v1/tokens"),
        ("GET", "/api/v1/tokens"),
        ("GET", "/api/v1/whoami"),
        ("POST", "/api/v1/agents/register"),
        ("POST", "/api/v1/agents/{node}/heartbeat"),
        ("GET", "/api/v1/agents/{node}/assignments"),
        ("POST", "/api/v1/agents/{node}/tasks/{task_id}/report"),
        ("POST", "/api/v1/agents/{node}/reports"),
        ("GET", "/api/v1/agents/{node}"),
        ("GET", "/api/v1/jobs/{job_id}/logs"),
    } <= fuzzed


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    allow_header_conformance,
    unsupported_method,
    missing_required_header,
    ignored_auth,
]
"""Every check schemathesis runs on single requests but two:
``positive_data_acceptance`` (the server refuses values the schema cannot
rule out: a quantity "", a resource name, an explain of a job that is not
waiting) and ``negative_data_rejection`` (the hooks above swap generated
bodies and ids for real ones, which turns many a negative case into a valid
request). The stateful checks need links between operations; there are none."""


def _no_waiting(case: schemathesis.Case) -> None:
    """A long poll or a forced release asked to wait seconds would hold the
    run: such a wait becomes 0 (what is answered is the same, at once)."""
    query = case.query
    if isinstance(query, dict):
        wait = query.get("wait")
        if isinstance(wait, int | float) and not isinstance(wait, bool) and wait > 0:
            query["wait"] = 0


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate],
)
def test_every_answer_is_the_documented_one(
    case: schemathesis.Case, live: tuple[ServerProcess, list[str]]
) -> None:
    proc, _ = live
    _no_waiting(case)
    checks = CHECKS
    if case.operation.path == "/api/v1/agents/register":
        # GET /api/v1/agents/{node} serves this path too (a node may be called
        # "register"), so its 405 rightly allows GET, which this path item lacks.
        checks = [c for c in CHECKS if c is not allow_header_conformance]
    headers = proc.headers
    if case.operation.path.startswith("/api/v1/agents/") and next(_AGENT_TURN) % 2:
        headers = {"Authorization": f"Bearer {_AGENT_TOKEN[0]}"}
    case.call_and_validate(base_url=proc.url, headers=headers, checks=checks, timeout=30)


NEGATIVE_EXAMPLES = 15
_negative_config = SchemathesisConfig()
_negative_config.projects.default.generation.update(
    modes=[GenerationMode.NEGATIVE], max_examples=NEGATIVE_EXAMPLES, database="none"
)
_rejection = _negative_config.projects.default.checks.negative_data_rejection
# A body over the server's limit is refused before it is read: 413 is a refusal
# too (schemathesis's list leaves it out). A generated heartbeat with more
# tasks than its maxItems ran to 2.7 MB once.
_rejection.expected_statuses = [*_rejection.expected_statuses, "413"]
negative = schemathesis.openapi.from_dict(OPENAPI, config=_negative_config)
"""The same schema without the hooks above (they swap generated values for
valid ones), for requests that break it on purpose."""


@negative.parametrize()
@settings(
    max_examples=NEGATIVE_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.generate],
)
def test_every_request_that_breaks_the_schema_is_refused(
    case: schemathesis.Case, live: tuple[ServerProcess, list[str]]
) -> None:
    proc, _ = live
    _no_waiting(case)
    case.call_and_validate(
        base_url=proc.url,
        headers=proc.headers,
        timeout=30,
        checks=[not_a_server_error, negative_data_rejection],
    )


def test_the_server_survived_the_fuzzing(live: tuple[ServerProcess, list[str]]) -> None:
    proc, _ = live
    assert proc.proc is not None and proc.proc.poll() is None
    assert httpx.get(proc.url + "/healthz", timeout=5).json() == {"status": "ok"}
    with proc.client() as c:
        assert c.get("/api/v1/nodes").status_code == 200
        assert c.get("/api/v1/allocations").status_code == 200
        assert c.get("/api/v1/capacity/summary").status_code == 200
    log = next(Path(proc.data_dir).glob("server-*.log")).read_text()
    assert "unhandled_error" not in log


def test_every_operation_documents_its_answers() -> None:
    """Each operation names a model for its success (not a bare object) and
    the error shape for every error status it lists."""
    untyped, wrong_errors = [], []
    for path, item in OPENAPI["paths"].items():
        for method, op in item.items():
            for status, answer in op["responses"].items():
                schemas = [m.get("schema", {}) for m in answer.get("content", {}).values()]
                if status.startswith("2") and not any(
                    "$ref" in s or s.get("type") == "string" for s in schemas
                ):
                    untyped.append((method, path, status))
                if status[0] in "45" and schemas != [{"$ref": "#/components/schemas/ErrorOut"}]:
                    wrong_errors.append((method, path, status))
    assert untyped == []
    assert wrong_errors == []
    grant = OPENAPI["paths"]["/api/v1/allocations"]["post"]["responses"]
    assert grant["201"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/AllocationOut"
    }
    assert sorted(grant) == ["201", "400", "401", "403", "404", "409", "413", "422", "429", "503"]
    assert OPENAPI["components"]["schemas"]["AllocationOut"]["additionalProperties"] is False
    assert "HTTPValidationError" not in OPENAPI["components"]["schemas"]
