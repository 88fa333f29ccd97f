"""Bad requests over loopback against a real server: malformed JSON, wrong
types and out-of-range values answer 4xx with a JSON message a person can act
on, never 500, and leave the server answering."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from server.helpers import add_node
from support import ServerProcess

JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def shared(shared: ServerProcess) -> ServerProcess:
    """The module's server (``conftest.py``) with node n1 and its one GPU."""
    with shared.client() as c:
        add_node(c, {"name": "n1", "resources": {"cpu": "8", "memory": "16Gi", "gpu": 1},
                     "devices": {"gpu": [{"id": "0"}]}})
    return shared


# (body sent to POST /api/v1/allocations, status, error code, message)
BAD_GRANTS: list[tuple[Any, int, str, str]] = [
    ([], 422, "invalid_input",
     "body: Input should be a valid dictionary or object to extract fields from"),
    ({}, 422, "invalid_input", "resources: Field required"),
    ({"resources": ["cpu"]}, 422, "invalid_input", "resources: Input should be a valid dictionary"),
    ({"resources": {"cpu": "1"}, "priority": 5}, 422, "invalid_input",
     "priority: Extra inputs are not permitted"),
    ({"resources": {"cpu": "1"}, "node": "bad name!"}, 422, "invalid_input",
     "node: String should match pattern '^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$'"),
    ({"resources": {"cpu": "1"}, "owner": ""}, 422, "invalid_input",
     "owner: String should have at least 1 character"),
    ({"resources": {"cpu": "1"}, "labels": {"k": "a\nb"}}, 422, "invalid_input",
     "labels.k: String should match pattern '^[^\\x00-\\x1f\\x7f]*$'"),
    ({"resources": {}}, 422, "invalid_input",
     "resources: request at least one resource with a positive amount"),
    ({"resources": {"cpu": 0, "memory": "0Gi"}}, 422, "invalid_input",
     "resources: request at least one resource with a positive amount"),
    ({"resources": {"cpu": "-1"}}, 422, "invalid_quantity",
     "resources.cpu: '-1' is negative; quantities are >= 0"),
    ({"resources": {"cpu": -0.5}}, 422, "invalid_quantity",
     "resources.cpu: '-0.5' is negative; quantities are >= 0"),
    ({"resources": {"gpu": "1.5"}}, 422, "invalid_quantity",
     "resources.gpu: '1.5' is a fraction; gpu is counted in whole units"),
    ({"resources": {"cpu": "0.0005"}}, 422, "invalid_quantity",
     "resources.cpu: '0.0005' is a fraction; cpu is counted in whole millicores"),
    ({"resources": {"memory": "0.5"}}, 422, "invalid_quantity",
     "resources.memory: '0.5' is a fraction; memory and storage are counted in whole bytes"),
    ({"resources": {"cpu": "2Gi"}}, 422, "invalid_quantity",
     "resources.cpu: '2Gi': cpu takes cores ('2', '1.5') or millicores ('500m'), "
     "not byte units"),
    ({"resources": {"memory": "512m"}}, 422, "invalid_quantity",
     "resources.memory: '512m' uses 'm' (milli), which only cpu accepts"),
    ({"resources": {"cpu": "2Q"}}, 422, "invalid_quantity",
     "resources.cpu: unknown unit 'Q' in '2Q'; use m (cpu only), Ki Mi Gi Ti Pi Ei or "
     "K M G T P E"),
    ({"resources": {"cpu": "two"}}, 422, "invalid_quantity",
     "resources.cpu: cannot parse 'two' as a quantity (examples: '2', '500m', '1.5', "
     "'16Gi', '100G')"),
    ({"resources": {"cpu": "1e400"}}, 422, "invalid_quantity",
     "resources.cpu: cannot parse '1e400' as a quantity (examples: '2', '500m', '1.5', "
     "'16Gi', '100G')"),
    ({"resources": {"cpu": str(2**62)}}, 422, "invalid_quantity",
     "resources.cpu: '4611686018427387904' is too large; the limit is 2^63-1 millicores"),
    ({"resources": {"memory": 2**64}}, 422, "invalid_quantity",
     "resources.memory: '18446744073709551616' is too large; the limit is 2^63-1 bytes"),
    ({"resources": {"CPU": "2"}}, 422, "invalid_resource_name",
     "resources: resource name 'CPU' is invalid; use 1-63 lowercase letters, digits, '.', "
     "'_' or '-', starting with a letter or digit"),
]


@pytest.mark.parametrize(("body", "status", "code", "message"), BAD_GRANTS)
def test_bad_grant_bodies_answer_4xx_with_a_message(
    api: httpx.Client, body: Any, status: int, code: str, message: str
) -> None:
    r = api.post("/api/v1/allocations", json=body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert (r.json()["error"], r.json()["message"]) == (code, message)


@pytest.mark.parametrize(
    "value", ["true", "null", "[1]", '{"n": 1}'], ids=["bool", "null", "list", "object"]
)
def test_a_quantity_of_the_wrong_type_is_422(api: httpx.Client, value: str) -> None:
    content = '{"resources": {"cpu": ' + value + "}}"
    r = api.post("/api/v1/allocations", content=content, headers=JSON)
    assert r.status_code == 422
    assert r.json()["error"] == "invalid_input"
    assert r.json()["message"].startswith("resources.cpu")
    assert "Input should be a valid string" in r.json()["message"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"resources": ', "malformed JSON at character 14: Expecting value"),
        (b'{"resources": {"cpu": "1"},}', "malformed JSON at character 27: "
         "Expecting property name enclosed in double quotes"),
        (b"{'resources': {}}", "malformed JSON at character 1: "
         "Expecting property name enclosed in double quotes"),
        (b"\xff\xfe", "malformed JSON at character 0: Expecting value"),
    ],
    ids=["truncated", "trailing-comma", "single-quotes", "binary"],
)
def test_malformed_json_is_400(api: httpx.Client, content: bytes, message: str) -> None:
    r = api.post("/api/v1/allocations", content=content, headers=JSON)
    assert r.status_code == 400, r.text
    assert r.json() == {
        "error": "malformed_json",
        "message": message,
        "details": [{"field": "", "message": "JSON decode error"}],
    }


@pytest.mark.parametrize("path", ["/api/v1/nodes", "/api/v1/allocations"])
@pytest.mark.parametrize(
    "content", [b"[" * 100_000, b"\x83\xa0\x1e\x90+", b'{"a": "\xff"}'],
    ids=["nested-too-deep", "not-utf8", "not-utf8-inside"],
)
def test_bodies_json_cannot_decode_are_400(api: httpx.Client, path: str, content: bytes) -> None:
    """Regression: the grant fast path answered 500 to these (json.loads
    raises UnicodeDecodeError and RecursionError, not JSONDecodeError)."""
    r = api.post(path, content=content, headers=JSON)
    assert r.status_code == 400, r.text
    assert r.json()["error"] in ("malformed_json", "http_error")
    assert r.json()["message"]


@pytest.mark.parametrize(
    "content_type", ["application/x-www-form-urlencoded", "text/plain", None],
    ids=["curl-d", "text", "none"],
)
def test_a_json_body_is_json_whatever_the_header_says(
    shared: ServerProcess, content_type: str | None
) -> None:
    headers = dict(shared.headers)
    if content_type:
        headers["content-type"] = content_type
    r = httpx.post(shared.url + "/api/v1/allocations", headers=headers, timeout=10,
                   content=b'{"resources": {"cpu": "100m"}, "node": "n1"}')
    assert r.status_code == 201, r.text
    assert r.json()["resources"] == {"cpu": "100m"}
    with shared.client() as api:
        assert api.delete(f"/api/v1/allocations/{r.json()['id']}").status_code == 200


def test_a_form_that_is_not_json_is_400(shared: ServerProcess) -> None:
    r = httpx.post(shared.url + "/api/v1/allocations", timeout=10,
                   headers=shared.headers, data={"cpu": "1"})
    assert r.status_code == 400
    assert r.json()["message"] == "malformed JSON at character 0: Expecting value"


# (body sent to POST /api/v1/nodes, status, error code, message)
BAD_NODES: list[tuple[Any, int, str, str]] = [
    ({"resources": {"cpu": "1"}}, 422, "invalid_input", "name: Field required"),
    ({"name": "-x"}, 422, "invalid_input",
     "name: String should match pattern '^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$'"),
    ({"name": "x" * 254}, 422, "invalid_input",
     "name: String should match pattern '^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$'"),
    ({"name": "x1", "state": "sleeping"}, 422, "invalid_input",
     "state: Input should be 'ready', 'draining', 'cordoned', 'suspect' or 'down'"),
    ({"name": "x1", "labels": {"-bad": "v"}}, 422, "invalid_input",
     "labels.-bad.[key]: String should match pattern '^[A-Za-z0-9][A-Za-z0-9._/-]{0,252}$'"),
    ({"name": "x1", "resources": {"cpu": "-8"}}, 422, "invalid_quantity",
     "resources.cpu: '-8' is negative; quantities are >= 0"),
    ({"name": "x1", "resources": {"gpu": 2}, "devices": {"gpu": [{"id": "0"}]}}, 422,
     "invalid_input", "devices.gpu: 1 devices listed but resources.gpu is 2; they must agree"),
    ({"name": "x1", "resources": {"gpu": 0}, "devices": {"gpu": [{"id": "0"}]}}, 422,
     "invalid_input", "devices.gpu: 1 devices listed but resources.gpu is 0; they must agree"),
    ({"name": "x1", "devices": {"gpu": [{"id": "0"}, {"id": "0"}]}}, 422, "invalid_input",
     "devices.gpu: device ids must be unique"),
    ({"name": "x1", "devices": {"gpu": [{"id": "0", "memory": "-1Gi"}]}}, 422,
     "invalid_quantity", "devices.gpu[0].memory: '-1Gi' is negative; quantities are >= 0"),
    ({"name": "x1", "devices": {"GPU": [{"id": "0"}]}}, 422, "invalid_resource_name",
     "devices: resource name 'GPU' is invalid; use 1-63 lowercase letters, digits, '.', "
     "'_' or '-', starting with a letter or digit"),
    ({"name": "x1", "devices": {"gpu": [{"id": ""}]}}, 422, "invalid_input",
     "devices.gpu.0.id: String should have at least 1 character"),
]


@pytest.mark.parametrize(("body", "status", "code", "message"), BAD_NODES)
def test_bad_node_bodies_answer_4xx_with_a_message(
    api: httpx.Client, body: Any, status: int, code: str, message: str
) -> None:
    r = api.post("/api/v1/nodes", json=body)
    assert r.status_code == status, r.text
    assert (r.json()["error"], r.json()["message"]) == (code, message)
    assert api.get("/api/v1/nodes/x1").status_code == 404


def test_an_update_setting_a_device_resource_to_zero_is_422(api: httpx.Client) -> None:
    """Regression: a zero capacity was dropped and then the devices counted
    instead, so ``"gpu": 0`` silently kept every GPU."""
    node = {"name": "zero-1", "resources": {"cpu": "4", "gpu": 2},
            "devices": {"gpu": [{"id": "0"}, {"id": "1"}]}}
    assert api.post("/api/v1/nodes", json=node).status_code == 201
    r = api.put("/api/v1/nodes/zero-1", json={"resources": {"cpu": "4", "gpu": 0}})
    assert r.status_code == 422
    assert r.json()["message"] == (
        "devices.gpu: 2 devices listed but resources.gpu is 0; they must agree"
    )
    r = api.put("/api/v1/nodes/zero-1", json={"resources": {"cpu": "4", "gpu": 0},
                                               "devices": {}})
    assert r.status_code == 200, r.text
    assert r.json()["resources"] == {"cpu": "4"}
    assert r.json()["devices"] == {}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"name": "x1", "specs": {"a": "\\ud800"}}',
         "specs.a: Value error, text must be valid Unicode (a lone surrogate such as \\ud800 "
         "is not)"),
        (b'{"name": "x1", "specs": {"a": [1, {"b": "\\udc00"}]}}',
         "specs.a: Value error, text must be valid Unicode (a lone surrogate such as \\ud800 "
         "is not)"),
        (b'{"name": "x1", "devices": {"gpu": [{"id": "0", "attrs": {"k": "\\ud800"}}]}}',
         "devices.gpu.0.attrs.k: Value error, text must be valid Unicode (a lone surrogate "
         "such as \\ud800 is not)"),
        (b'{"name": "x1", "specs": {"a": NaN}}',
         "specs.a: Value error, nan is not a JSON number; use a finite number"),
        (b'{"name": "x1", "specs": {"a": {"b": -Infinity}}}',
         "specs.a: Value error, -inf is not a JSON number; use a finite number"),
    ],
    ids=["surrogate", "nested-surrogate", "device-attr-surrogate", "nan", "infinity"],
)
def test_free_form_json_that_cannot_be_stored_is_422(
    api: httpx.Client, content: bytes, message: str
) -> None:
    """Regression: a lone surrogate in specs was stored, then every GET
    /api/v1/nodes answered 500 (it cannot be encoded as UTF-8); NaN was
    silently answered as null (and PostgreSQL's JSON refuses it)."""
    r = api.post("/api/v1/nodes", content=content, headers=JSON)
    assert r.status_code == 422, r.text
    assert r.json()["message"] == message
    r = api.put("/api/v1/nodes/n1", content=content.replace(b'"name": "x1", ', b""),
                headers=JSON)
    assert r.status_code == 422, r.text
    assert api.get("/api/v1/nodes").status_code == 200
    assert api.get("/api/v1/nodes/x1").status_code == 404


def test_free_form_specs_are_kept_as_given(api: httpx.Client) -> None:
    specs = {"cpu_model": "EPYC 9654", "numa": [0, 1], "bios": {"v": 1.25, "secure": True},
             "serial": None, "big": 123456789012345678901234567890, "city": "Zürich ☃"}
    r = api.post("/api/v1/nodes", json={"name": "specs-1", "specs": specs})
    assert r.status_code == 201
    assert r.json()["specs"] == specs
    assert api.get("/api/v1/nodes/specs-1").json()["specs"] == specs


@pytest.mark.parametrize(
    ("method", "path", "params", "message"),
    [
        ("GET", "/api/v1/allocations", {"limit": 0},
         "query.limit: Input should be greater than or equal to 1"),
        ("GET", "/api/v1/allocations", {"limit": 1001},
         "query.limit: Input should be less than or equal to 1000"),
        ("GET", "/api/v1/allocations", {"limit": "ten"},
         "query.limit: Input should be a valid integer, unable to parse string as an integer"),
        ("GET", "/api/v1/allocations", {"offset": -1},
         "query.offset: Input should be greater than or equal to 0"),
        ("GET", "/api/v1/allocations", {"state": "gone"},
         "query.state: Input should be 'active' or 'released'"),
        ("GET", "/api/v1/allocations", {"node": "x" * 300},
         "query.node: String should have at most 253 characters"),
        ("GET", "/api/v1/capacity/summary", {"group_by": "colour"},
         "query.group_by: Input should be 'facility', 'type', 'resource', 'zone' or 'node'"),
        ("GET", "/api/v1/nodes", {"state": "asleep"},
         "query.state: Input should be 'ready', 'draining', 'cordoned', 'suspect' or 'down'"),
        ("GET", "/api/v1/nodes", {"health": "meh"},
         "query.health: Input should be 'healthy', 'degraded' or 'unhealthy'"),
        ("GET", "/api/v1/nodes", {"selector": "facility in ()"},
         "selector: 'facility in ()' lists no values"),
        ("GET", "/api/v1/nodes", {"selector": "a=b=c"},
         "selector: cannot parse 'a=b=c'; use key=value, key!=value, key in (a,b), "
         "key notin (a,b), key or !key"),
        ("DELETE", "/api/v1/nodes/n1", {"force": "maybe"},
         "query.force: Input should be a valid boolean, unable to interpret input"),
        ("DELETE", "/api/v1/allocations/abc", {"reason": "bored"},
         "query.reason: Input should be 'released', 'completed', 'failed', 'cancelled', "
         "'preempted', 'node_lost', 'node_deleted' or 'expired'"),
    ],
)
def test_bad_query_parameters_are_422(
    api: httpx.Client, method: str, path: str, params: dict[str, Any], message: str
) -> None:
    r = api.request(method, path, params=params)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "invalid_input"
    assert r.json()["message"] == message
    assert api.get("/api/v1/nodes/n1").status_code == 200


def test_unknown_routes_and_methods_answer_json(api: httpx.Client) -> None:
    r = api.get("/api/v1/nothing")
    assert (r.status_code, r.json()) == (404, {"error": "http_error", "message": "Not Found"})
    r = api.patch("/api/v1/nodes/n1", json={})
    assert (r.status_code, r.json()) == (
        405, {"error": "http_error", "message": "Method Not Allowed"}
    )


def test_odd_path_parameters_are_404_not_500(api: httpx.Client) -> None:
    for path in ("/api/v1/nodes/%00", "/api/v1/nodes/%ff%fe", "/api/v1/allocations/%ed%a0%80",
                 "/api/v1/nodes/" + "x" * 5000):
        r = api.get(path)
        assert r.status_code == 404, (path, r.text)
        assert r.json()["error"] in ("node_not_found", "allocation_not_found")


def test_no_error_reached_the_catch_all(shared: ServerProcess) -> None:
    """Every failure above was a deliberate 4xx: the server logged no
    unhandled error."""
    log = next(Path(shared.data_dir).glob("server-*.log")).read_text()
    assert "unhandled_error" not in log
