"""Tokens and roles over loopback against a real server: every call but
/healthz needs a bearer token; admin does everything, user reads, allocates
and releases its own, agent registers and updates the node named like it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from server.helpers import add_node, make_token
from support import ServerProcess

MISSING = (
    "missing Authorization header; send 'Authorization: Bearer <token>' "
    "(create one with 'apportion token create')"
)

API_CALLS: list[tuple[str, str]] = [
    ("GET", "/api/v1/nodes"),
    ("POST", "/api/v1/nodes"),
    ("GET", "/api/v1/nodes/n1"),
    ("PUT", "/api/v1/nodes/n1"),
    ("DELETE", "/api/v1/nodes/n1"),
    ("GET", "/api/v1/allocations"),
    ("POST", "/api/v1/allocations"),
    ("GET", "/api/v1/allocations/abc"),
    ("DELETE", "/api/v1/allocations/abc"),
    ("GET", "/api/v1/capacity/summary"),
    ("POST", "/api/v1/tokens"),
    ("GET", "/api/v1/tokens"),
    ("GET", "/api/v1/whoami"),
]


@pytest.fixture(scope="module")
def shared(shared: ServerProcess) -> ServerProcess:
    """The module's server (``conftest.py``) with node n1 to act on."""
    with shared.client() as c:
        add_node(c, {"name": "n1", "resources": {"cpu": "16", "memory": "32Gi"}})
    return shared


@pytest.fixture(scope="module")
def alice(shared: ServerProcess) -> Iterator[httpx.Client]:
    with shared.client(make_token(shared, "alice", "user")) as c:
        yield c


@pytest.fixture(scope="module")
def bob(shared: ServerProcess) -> Iterator[httpx.Client]:
    with shared.client(make_token(shared, "bob", "user")) as c:
        yield c


@pytest.fixture(scope="module")
def agent(shared: ServerProcess) -> Iterator[httpx.Client]:
    with shared.client(make_token(shared, "agent-7", "agent")) as c:
        yield c


@pytest.fixture
def admin(api: httpx.Client) -> httpx.Client:
    """The admin token's client: the module's ``api`` (``conftest.py``)."""
    return api


def _denied(r: httpx.Response, message: str) -> None:
    assert r.status_code == 403, r.text
    assert r.json()["error"] == "permission_denied"
    assert r.json()["message"] == message


# -- no token, bad token --------------------------------------------------------------


def test_healthz_needs_no_token(shared: ServerProcess) -> None:
    assert httpx.get(shared.url + "/healthz", timeout=10).status_code == 200


@pytest.mark.parametrize(("method", "path"), API_CALLS)
def test_every_api_call_without_a_token_is_401(
    shared: ServerProcess, method: str, path: str
) -> None:
    r = httpx.request(method, shared.url + path, json={}, timeout=10)
    assert r.status_code == 401
    assert r.json() == {"error": "unauthenticated", "message": MISSING}


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("Bearer not-a-real-token", "unknown token"),
        ("Bearer", "Authorization must be 'Bearer <token>'"),
        ("Basic YWRtaW46YWRtaW4=", "Authorization must be 'Bearer <token>'"),
        ("apt_tokenwithoutscheme", "Authorization must be 'Bearer <token>'"),
    ],
)
def test_a_bad_authorization_header_is_401(
    shared: ServerProcess, header: str, message: str
) -> None:
    r = httpx.get(shared.url + "/api/v1/nodes", headers={"Authorization": header}, timeout=10)
    assert r.status_code == 401
    assert r.json() == {"error": "unauthenticated", "message": message}


def test_the_scheme_is_case_insensitive(shared: ServerProcess) -> None:
    r = httpx.get(shared.url + "/api/v1/whoami",
                  headers={"Authorization": f"bearer {shared.token}"}, timeout=10)
    assert r.json() == {"name": "admin", "role": "admin"}


def test_nothing_is_written_without_a_token(shared: ServerProcess, admin: httpx.Client) -> None:
    body = {"resources": {"cpu": "1"}, "node": "n1"}
    before = admin.get("/api/v1/nodes/n1").json()["allocated_base"]
    assert httpx.post(shared.url + "/api/v1/allocations", json=body, timeout=10).status_code == 401
    assert admin.get("/api/v1/nodes/n1").json()["allocated_base"] == before


# -- tokens -----------------------------------------------------------------------------


def test_admin_token_from_the_environment_is_an_admin(admin: httpx.Client) -> None:
    assert admin.get("/api/v1/whoami").json() == {"name": "admin", "role": "admin"}


def test_created_token_is_shown_once_and_listed_without_its_secret(
    shared: ServerProcess, admin: httpx.Client
) -> None:
    r = admin.post("/api/v1/tokens", json={"name": "carol", "role": "user"})
    assert r.status_code == 201
    created = r.json()
    assert set(created) == {"token", "id", "name", "role", "created_at"}
    assert (created["name"], created["role"]) == ("carol", "user")
    assert re.match(r"^apt_[A-Za-z0-9_-]{40,}$", created["token"])
    with shared.client(created["token"]) as carol:
        assert carol.get("/api/v1/whoami").json() == {"name": "carol", "role": "user"}
    listed = admin.get("/api/v1/tokens").json()["tokens"]
    mine = [t for t in listed if t["id"] == created["id"]]
    # expires_at: None for a token made by hand (a dashboard session's ends).
    assert mine == [{**{k: created[k] for k in ("id", "name", "role", "created_at")},
                     "expires_at": None}]
    assert r.text.count(created["token"]) == 1
    assert created["token"] not in admin.get("/api/v1/tokens").text


def test_token_role_must_be_admin_user_or_agent(admin: httpx.Client) -> None:
    r = admin.post("/api/v1/tokens", json={"name": "eve", "role": "root"})
    assert r.status_code == 422
    assert r.json()["message"] == "role: String should match pattern '^(admin|user|agent)$'"


@pytest.mark.parametrize("who", ["alice", "agent"])
def test_only_admins_create_or_list_tokens(request: pytest.FixtureRequest, who: str) -> None:
    client: httpx.Client = request.getfixturevalue(who)
    name = "alice" if who == "alice" else "agent-7"
    role = "user" if who == "alice" else "agent"
    message = f"this needs the admin role; your token ({name}) is {role}"
    _denied(client.post("/api/v1/tokens", json={"name": "x", "role": "admin"}), message)
    _denied(client.get("/api/v1/tokens"), message)


# -- user -------------------------------------------------------------------------------


def test_user_reads_everything(alice: httpx.Client) -> None:
    assert alice.get("/api/v1/whoami").json() == {"name": "alice", "role": "user"}
    assert alice.get("/api/v1/nodes").status_code == 200
    assert alice.get("/api/v1/nodes/n1").status_code == 200
    assert alice.get("/api/v1/allocations").status_code == 200
    assert alice.get("/api/v1/capacity/summary").status_code == 200


def test_user_allocates_as_itself(alice: httpx.Client) -> None:
    r = alice.post("/api/v1/allocations", json={"resources": {"cpu": "1"}, "node": "n1"})
    assert r.status_code == 201
    assert r.json()["owner"] == "alice"
    r = alice.post("/api/v1/allocations",
                   json={"resources": {"cpu": "1"}, "node": "n1", "owner": "alice"})
    assert r.status_code == 201
    assert r.json()["owner"] == "alice"


def test_user_may_not_allocate_for_someone_else(alice: httpx.Client) -> None:
    r = alice.post("/api/v1/allocations",
                   json={"resources": {"cpu": "1"}, "node": "n1", "owner": "bob"})
    _denied(r, "owner: token alice may only allocate as itself, not 'bob'")
    assert r.json()["field"] == "owner"


def test_user_releases_its_own_but_not_another_users(
    alice: httpx.Client, bob: httpx.Client, admin: httpx.Client
) -> None:
    mine = alice.post("/api/v1/allocations", json={"resources": {"cpu": "1"}}).json()
    theirs = bob.post("/api/v1/allocations", json={"resources": {"cpu": "1"}}).json()
    r = alice.delete(f"/api/v1/allocations/{theirs['id']}")
    _denied(r, f"allocation {theirs['id']} belongs to bob; token alice may release only its own")
    assert r.json()["id"] == theirs["id"]
    assert admin.get(f"/api/v1/allocations/{theirs['id']}").json()["state"] == "active"

    r = alice.delete(f"/api/v1/allocations/{mine['id']}")
    assert r.status_code == 200
    assert r.json()["state"] == "released"
    # Refused even once released: it is still bob's.
    assert bob.delete(f"/api/v1/allocations/{theirs['id']}").status_code == 200
    assert alice.delete(f"/api/v1/allocations/{theirs['id']}").status_code == 403


def test_user_may_not_release_an_allocation_without_owner(
    alice: httpx.Client, admin: httpx.Client
) -> None:
    alloc = admin.post("/api/v1/allocations", json={"resources": {"cpu": "1"}}).json()
    assert alloc["owner"] is None
    _denied(alice.delete(f"/api/v1/allocations/{alloc['id']}"),
            f"allocation {alloc['id']} belongs to nobody; token alice may release only its own")


def test_admin_allocates_for_anyone_and_releases_anything(
    alice: httpx.Client, admin: httpx.Client
) -> None:
    r = admin.post("/api/v1/allocations", json={"resources": {"cpu": "1"}, "owner": "dave"})
    assert r.status_code == 201
    assert r.json()["owner"] == "dave"
    theirs = alice.post("/api/v1/allocations", json={"resources": {"cpu": "1"}}).json()
    r = admin.delete(f"/api/v1/allocations/{theirs['id']}")
    assert (r.status_code, r.json()["state"]) == (200, "released")


def test_user_may_not_change_nodes(alice: httpx.Client) -> None:
    _denied(
        alice.post("/api/v1/nodes", json={"name": "u1", "resources": {"cpu": "1"}}),
        "token alice (user) may not change node u1; admins may, and agents may change the "
        "node named like their token",
    )
    _denied(
        alice.put("/api/v1/nodes/n1", json={"labels": {"x": "y"}}),
        "token alice (user) may not change node n1; admins may, and agents may change the "
        "node named like their token",
    )
    _denied(alice.delete("/api/v1/nodes/n1"),
            "this needs the admin role; your token (alice) is user")
    assert alice.get("/api/v1/nodes/u1").status_code == 404


# -- agent ------------------------------------------------------------------------------


def test_agent_registers_and_updates_its_own_node(agent: httpx.Client) -> None:
    body: dict[str, Any] = {"name": "agent-7", "resources": {"cpu": "4", "memory": "8Gi"}}
    r = agent.post("/api/v1/nodes", json=body)
    assert r.status_code == 201, r.text
    r = agent.put("/api/v1/nodes/agent-7", json={"resources": {"cpu": "8", "memory": "8Gi"}})
    assert r.status_code == 200
    assert r.json()["resources"] == {"cpu": "8", "memory": "8Gi"}
    assert agent.get("/api/v1/nodes/agent-7").json()["resources_base"]["cpu"] == 8000


def test_agent_may_not_touch_other_nodes_delete_or_allocate(agent: httpx.Client) -> None:
    other = ("token agent-7 (agent) may not change node {}; admins may, and agents may change "
             "the node named like their token")
    _denied(agent.post("/api/v1/nodes", json={"name": "agent-8", "resources": {"cpu": "1"}}),
            other.format("agent-8"))
    _denied(agent.put("/api/v1/nodes/n1", json={"resources": {"cpu": "1"}}), other.format("n1"))
    _denied(agent.delete("/api/v1/nodes/agent-7"),
            "this needs the admin role; your token (agent-7) is agent")
    _denied(agent.post("/api/v1/allocations", json={"resources": {"cpu": "1"}}),
            "this needs the admin or user role; your token (agent-7) is agent")
    _denied(agent.delete("/api/v1/allocations/abc"),
            "this needs the admin or user role; your token (agent-7) is agent")
