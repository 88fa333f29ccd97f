"""/api/v1/nodes over loopback against a real server: register, read, list
with filters, update, delete; plus /healthz, /openapi.json and /docs."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from server.helpers import ISO, add_node, grant
from support import ServerProcess

GPU_NODE: dict[str, Any] = {
    "name": "n1",
    "resources": {"cpu": "8", "memory": "16Gi", "gpu": 2},
    "devices": {
        "gpu": [
            {"id": "0", "model": "H100", "memory": "80Gi"},
            {"id": "1", "model": "H100", "memory": "80Gi"},
        ]
    },
    "labels": {"facility": "texas-1", "type": "gpu", "gpu.model": "H100"},
}


def _device(i: str, holder: str | None = None) -> dict[str, Any]:
    return {
        "id": i,
        "model": "H100",
        "memory": "80Gi",
        "memory_base": 85899345920,
        "uuid": None,
        "serial": None,
        "attrs": {},
        "resource": "gpu",
        "allocation_id": holder,
    }


def _without_times(body: dict[str, Any]) -> dict[str, Any]:
    out = dict(body)
    for key in ("created_at", "updated_at"):
        assert ISO.match(out.pop(key)), body
    return out


# -- health and documentation -------------------------------------------------


def test_healthz_answers_without_a_token(shared: ServerProcess) -> None:
    r = httpx.get(shared.url + "/healthz", timeout=10)
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


def test_openapi_lists_every_operation_of_the_api(shared: ServerProcess) -> None:
    doc = httpx.get(shared.url + "/openapi.json", timeout=10).json()
    assert doc["info"]["title"] == "apportion"
    operations = {(path, m) for path, item in doc["paths"].items() for m in item}
    assert {
        ("/healthz", "get"),
        ("/api/v1/nodes", "get"),
        ("/api/v1/nodes", "post"),
        ("/api/v1/nodes/{name}", "get"),
        ("/api/v1/nodes/{name}", "put"),
        ("/api/v1/nodes/{name}", "delete"),
        ("/api/v1/allocations", "get"),
        ("/api/v1/allocations", "post"),
        ("/api/v1/allocations/{alloc_id}", "get"),
        ("/api/v1/allocations/{alloc_id}", "delete"),
        ("/api/v1/capacity/summary", "get"),
        ("/api/v1/tokens", "post"),
    } <= operations
    list_params = {p["name"] for p in doc["paths"]["/api/v1/nodes"]["get"]["parameters"]}
    assert {"type", "facility", "state", "health", "selector"} <= list_params


def test_docs_page_is_served(shared: ServerProcess) -> None:
    r = httpx.get(shared.url + "/docs", timeout=10)
    assert r.status_code == 200
    assert "text/html" in r.headers["content-type"]
    assert "swagger-ui" in r.text
    assert "/openapi.json" in r.text


# -- register and read ----------------------------------------------------------


def test_register_answers_201_with_the_node_in_canonical_and_base_units(
    api: httpx.Client,
) -> None:
    body = add_node(api, GPU_NODE)
    assert _without_times(body) == {
        "name": "n1",
        "resources": {"cpu": "8", "memory": "16Gi", "gpu": "2"},
        "resources_base": {"cpu": 8000, "memory": 17179869184, "gpu": 2},
        "allocated": {"cpu": "0", "memory": "0", "gpu": "0"},
        "allocated_base": {"cpu": 0, "memory": 0, "gpu": 0},
        "available": {"cpu": "8", "memory": "16Gi", "gpu": "2"},
        "available_base": {"cpu": 8000, "memory": 17179869184, "gpu": 2},
        "devices": {"gpu": [_device("0"), _device("1")]},
        "labels": {"facility": "texas-1", "type": "gpu", "gpu.model": "H100"},
        "specs": {},
        "state": "ready",
        "health": "healthy",
    }
    assert body["created_at"] == body["updated_at"]


def test_quantities_come_back_canonical(api: httpx.Client) -> None:
    body = add_node(api, {
        "name": "canon-1",
        "resources": {
            "cpu": 0.5,
            "memory": "1.5Gi",
            "storage": "1T",
            "scratch-storage": 1000000000,
            "asic.s19": 3,
        },
    })
    assert body["resources"] == {
        "cpu": "500m",
        "memory": "1536Mi",
        "storage": "1T",
        "scratch-storage": "1G",
        "asic.s19": "3",
    }
    assert body["resources_base"] == {
        "cpu": 500,
        "memory": 1610612736,
        "storage": 1000000000000,
        "scratch-storage": 1000000000,
        "asic.s19": 3,
    }


def test_get_node_shows_its_allocations_and_who_holds_each_device(api: httpx.Client) -> None:
    add_node(api, {**GPU_NODE, "name": "held-1"})
    alloc = grant(api, node="held-1", resources={"cpu": "2", "memory": "4Gi", "gpu": 1})
    r = api.get("/api/v1/nodes/held-1")
    assert r.status_code == 200
    node = r.json()
    assert node["allocated"] == {"cpu": "2", "memory": "4Gi", "gpu": "1"}
    assert node["available"] == {"cpu": "6", "memory": "12Gi", "gpu": "1"}
    assert node["available_base"] == {"cpu": 6000, "memory": 12884901888, "gpu": 1}
    assert node["devices"] == {"gpu": [_device("0", alloc["id"]), _device("1")]}
    assert node["allocations"] == [alloc]


def test_unknown_node_is_404_naming_it(api: httpx.Client) -> None:
    r = api.get("/api/v1/nodes/nowhere")
    assert r.status_code == 404
    assert r.json() == {
        "error": "node_not_found", "message": "node nowhere not found", "node": "nowhere"
    }


def test_registering_a_name_twice_is_409(api: httpx.Client) -> None:
    add_node(api, {"name": "twice-1", "resources": {"cpu": "1"}})
    r = api.post("/api/v1/nodes", json={"name": "twice-1", "resources": {"cpu": "2"}})
    assert r.status_code == 409
    assert r.json() == {
        "error": "node_exists", "message": "node twice-1 already exists", "node": "twice-1"
    }
    assert api.get("/api/v1/nodes/twice-1").json()["resources"] == {"cpu": "1"}


# -- list filters -----------------------------------------------------------------


@pytest.fixture(scope="module")
def fleet(shared: ServerProcess) -> list[str]:
    """Five nodes in facilities only this group of tests uses."""
    bodies: list[dict[str, Any]] = [
        {"name": "f-gpu-h100", "resources": {"cpu": "32"},
         "labels": {"facility": "flt-a", "type": "gpu", "gpu.model": "H100"}},
        {"name": "f-gpu-a100", "resources": {"cpu": "32"},
         "labels": {"facility": "flt-a", "type": "gpu", "gpu.model": "A100"}},
        {"name": "f-cpu-a", "resources": {"cpu": "64"},
         "labels": {"facility": "flt-a", "type": "cpu"}},
        {"name": "f-cpu-b", "resources": {"cpu": "64"},
         "labels": {"facility": "flt-b", "type": "cpu"}, "state": "cordoned"},
        {"name": "f-gpu-b", "resources": {"cpu": "16"},
         "labels": {"facility": "flt-b", "type": "gpu", "gpu.model": "H100"}},
    ]
    with shared.client() as c:
        for body in bodies:
            assert c.post("/api/v1/nodes", json=body).status_code == 201
    return [b["name"] for b in bodies]


def _names(api: httpx.Client, **params: str) -> list[str]:
    r = api.get("/api/v1/nodes", params=params)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == len(body["nodes"])
    return [n["name"] for n in body["nodes"]]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"facility": "flt-a"}, ["f-cpu-a", "f-gpu-a100", "f-gpu-h100"]),
        ({"facility": "flt-b", "type": "gpu"}, ["f-gpu-b"]),
        ({"selector": "facility in (flt-a,flt-b),type=cpu"}, ["f-cpu-a", "f-cpu-b"]),
        ({"selector": "facility=flt-a,gpu.model=H100"}, ["f-gpu-h100"]),
        ({"selector": "facility in (flt-a,flt-b),gpu.model=H100"}, ["f-gpu-b", "f-gpu-h100"]),
        ({"selector": "facility=flt-a,gpu.model!=H100"}, ["f-cpu-a", "f-gpu-a100"]),
        ({"selector": "facility=flt-a,!gpu.model"}, ["f-cpu-a"]),
        ({"facility": "flt-b", "state": "cordoned"}, ["f-cpu-b"]),
        ({"facility": "flt-b", "state": "ready"}, ["f-gpu-b"]),
        ({"facility": "flt-b", "health": "healthy"}, ["f-cpu-b", "f-gpu-b"]),
        ({"facility": "flt-b", "health": "unhealthy"}, []),
        ({"facility": "flt-c"}, []),
    ],
)
def test_list_filters(
    api: httpx.Client, fleet: list[str], params: dict[str, str], expected: list[str]
) -> None:
    assert _names(api, **params) == expected


def test_list_shows_totals_allocated_and_available(api: httpx.Client) -> None:
    add_node(api, {"name": "lst-1", "resources": {"cpu": "4", "memory": "8Gi"},
               "labels": {"facility": "lst"}})
    grant(api, node="lst-1", resources={"cpu": "1500m", "memory": "2Gi"})
    [node] = api.get("/api/v1/nodes", params={"facility": "lst"}).json()["nodes"]
    assert node["resources"] == {"cpu": "4", "memory": "8Gi"}
    assert node["allocated"] == {"cpu": "1500m", "memory": "2Gi"}
    assert node["available"] == {"cpu": "2500m", "memory": "6Gi"}
    assert node["allocated_base"] == {"cpu": 1500, "memory": 2147483648}
    assert "allocations" not in node


# -- update ---------------------------------------------------------------------------


def test_update_replaces_given_fields_and_keeps_the_rest(api: httpx.Client) -> None:
    add_node(api, {**GPU_NODE, "name": "upd-1"})
    r = api.put("/api/v1/nodes/upd-1", json={
        "resources": {"cpu": "16", "memory": "32Gi", "gpu": 2},
        "labels": {"facility": "texas-2"},
        "state": "draining",
    })
    assert r.status_code == 200, r.text
    node = r.json()
    assert node["resources"] == {"cpu": "16", "memory": "32Gi", "gpu": "2"}
    assert node["labels"] == {"facility": "texas-2"}
    assert node["state"] == "draining"
    assert node["devices"] == {"gpu": [_device("0"), _device("1")]}
    assert api.get("/api/v1/nodes/upd-1").json()["resources_base"] == {
        "cpu": 16000, "memory": 34359738368, "gpu": 2
    }


def test_update_cannot_rename(api: httpx.Client) -> None:
    add_node(api, {"name": "ren-1", "resources": {"cpu": "1"}})
    r = api.put("/api/v1/nodes/ren-1", json={"name": "ren-2"})
    assert r.status_code == 422
    assert r.json() == {
        "error": "invalid_input",
        "message": "name: the body names 'ren-2' but the path names 'ren-1'; "
        "nodes cannot be renamed",
        "field": "name",
    }


def test_update_of_unknown_node_is_404(api: httpx.Client) -> None:
    r = api.put("/api/v1/nodes/ghost", json={"labels": {}})
    assert r.status_code == 404
    assert r.json()["message"] == "node ghost not found"


def test_lowering_capacity_below_allocated_is_409_naming_the_resource(
    api: httpx.Client,
) -> None:
    add_node(api, {"name": "low-1", "resources": {"cpu": "8", "memory": "16Gi"}})
    grant(api, node="low-1", resources={"cpu": "2", "memory": "4Gi"})
    r = api.put("/api/v1/nodes/low-1", json={"resources": {"cpu": "1", "memory": "16Gi"}})
    assert r.status_code == 409
    assert r.json() == {
        "error": "capacity_below_allocated",
        "message": "resources.cpu: cannot lower capacity of node low-1 to 1; 2 is allocated",
        "resource": "cpu",
        "node": "low-1",
    }
    r = api.put("/api/v1/nodes/low-1", json={"resources": {"cpu": "8"}})
    assert r.status_code == 409
    assert r.json()["message"] == (
        "resources.memory: cannot lower capacity of node low-1 to 0; 4Gi is allocated"
    )
    # Down to exactly what is allocated is allowed.
    r = api.put("/api/v1/nodes/low-1", json={"resources": {"cpu": "2", "memory": "4Gi"}})
    assert r.status_code == 200
    assert r.json()["available"] == {"cpu": "0", "memory": "0"}


def test_removing_an_allocated_device_is_409(api: httpx.Client) -> None:
    add_node(api, {**GPU_NODE, "name": "dev-1"})
    grant(api, node="dev-1", resources={"gpu": 1})
    r = api.put("/api/v1/nodes/dev-1", json={
        "resources": {"cpu": "8", "memory": "16Gi", "gpu": 1},
        "devices": {"gpu": [{"id": "1", "model": "H100"}]},
    })
    assert r.status_code == 409
    assert r.json() == {
        "error": "capacity_below_allocated",
        "message": "devices.gpu: devices 0 of node dev-1 are allocated and cannot be removed",
        "resource": "gpu",
        "node": "dev-1",
    }


# -- delete ----------------------------------------------------------------------------


def test_delete_with_active_allocations_is_409_unless_forced(api: httpx.Client) -> None:
    add_node(api, {**GPU_NODE, "name": "del-1"})
    a = grant(api, node="del-1", resources={"cpu": "1", "gpu": 1})
    b = grant(api, node="del-1", resources={"cpu": "2"})
    r = api.delete("/api/v1/nodes/del-1")
    assert r.status_code == 409
    assert r.json() == {
        "error": "node_has_allocations",
        "message": "node del-1 has 2 active allocation(s); release them or delete with "
        "force=true",
        "node": "del-1",
        "active_allocations": 2,
    }
    assert api.get("/api/v1/nodes/del-1").status_code == 200

    r = api.delete("/api/v1/nodes/del-1", params={"force": "true"})
    assert r.status_code == 200
    body = r.json()
    assert body["deleted"] == "del-1"
    released = {x["id"]: x for x in body["released"]}
    assert set(released) == {a["id"], b["id"]}
    for x in released.values():
        assert x["state"] == "released"
        assert x["reason"] == "node_deleted"
        assert ISO.match(x["released_at"])
    assert api.get("/api/v1/nodes/del-1").status_code == 404
    # Released allocations stay queryable after their node is gone.
    kept = api.get(f"/api/v1/allocations/{a['id']}").json()
    assert kept == released[a["id"]]
    assert kept["resources"] == {"cpu": "1", "gpu": "1"}
    assert kept["devices"] == {"gpu": ["0"]}


def test_delete_without_allocations_answers_an_empty_release_list(api: httpx.Client) -> None:
    add_node(api, {"name": "del-2", "resources": {"cpu": "1"}})
    r = api.delete("/api/v1/nodes/del-2")
    assert r.status_code == 200
    assert r.json() == {"deleted": "del-2", "released": []}
    assert api.delete("/api/v1/nodes/del-2").status_code == 404


def test_a_deleted_name_can_be_registered_again(api: httpx.Client) -> None:
    add_node(api, {"name": "again-1", "resources": {"cpu": "2"}})
    grant(api, node="again-1", resources={"cpu": "2"})
    assert api.delete("/api/v1/nodes/again-1", params={"force": "true"}).status_code == 200
    node = add_node(api, {"name": "again-1", "resources": {"cpu": "2"}})
    assert node["available"] == {"cpu": "2"}
    assert grant(api, node="again-1", resources={"cpu": "2"})["node"] == "again-1"


def test_fragmentation_lists_free_blocks_and_waiting_shapes(server: ServerProcess) -> None:
    with server.client() as api:
        for name in ("f1", "f2"):
            api.post("/api/v1/nodes", json={"name": name, "resources": {"cpu": "4", "gpu": "2"}})
            api.post("/api/v1/allocations", json={"node": name, "resources": {"gpu": "1"}})
        common = api.get("/api/v1/capacity/fragmentation").json()
        assert common["shapes_from"] == "common shapes"
        gpu = next(r for r in common["resources"] if r["resource"] == "gpu")
        assert (gpu["free"], gpu["largest_block"], gpu["fragmentation_index"]) == ("2", "1", 0.5)
        two = next(s for s in common["shapes"] if s["shape"] == {"gpu": "2"})
        assert (two["fits"], two["fits_if_whole"]) == (0, 1)
        api.post("/api/v1/jobs", json={"resources": {"gpu": "2"}})  # waits: no node has two
        waiting = api.get("/api/v1/capacity/fragmentation").json()
    assert waiting["shapes_from"] == "waiting jobs"
    assert [(s["shape"], s["fits"]) for s in waiting["shapes"]] == [({"gpu": "2"}, 0)]
