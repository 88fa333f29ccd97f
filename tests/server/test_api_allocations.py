"""/api/v1/allocations and /api/v1/capacity/summary over loopback against a
real server: grant, refuse, list, release (idempotently), summarize."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx

from server.helpers import ISO, add_node, grant
from support import ServerProcess


def gpu_node(name: str, **labels: str) -> dict[str, Any]:
    return {
        "name": name,
        "resources": {"cpu": "8", "memory": "16Gi", "gpu": 2},
        "devices": {"gpu": [{"id": "0", "model": "H100", "memory": "80Gi"},
                            {"id": "1", "model": "H100", "memory": "80Gi"}]},
        "labels": {"facility": "texas-1", "type": "gpu", **labels},
    }


def _strip(alloc: dict[str, Any]) -> dict[str, Any]:
    """The allocation without its generated id and timestamps (checked here)."""
    out = dict(alloc)
    assert re.match(r"^[0-9a-f]{32}$", out.pop("id"))
    assert ISO.match(out.pop("created_at"))
    released_at = out.pop("released_at")
    assert released_at is None or ISO.match(released_at)
    return out


# -- grant ------------------------------------------------------------------------


def test_grant_answers_201_with_the_allocation(api: httpx.Client) -> None:
    add_node(api, gpu_node("g1"))
    r = api.post("/api/v1/allocations", json={
        "resources": {"cpu": "2", "memory": "4Gi", "gpu": 1},
        "node": "g1",
        "owner": "alice",
        "labels": {"job": "train-7"},
    })
    assert r.status_code == 201
    assert r.headers["content-type"] == "application/json"
    alloc = r.json()
    assert _strip(alloc) == {
        "node": "g1",
        "resources": {"cpu": "2", "memory": "4Gi", "gpu": "1"},
        "resources_base": {"cpu": 2000, "memory": 4294967296, "gpu": 1},
        "devices": {"gpu": ["0"]},
        "owner": "alice",
        "labels": {"job": "train-7"},
        "state": "active",
        "reason": None,
    }
    assert alloc["released_at"] is None
    assert api.get(f"/api/v1/allocations/{alloc['id']}").json() == alloc


def test_grants_take_free_devices_in_order_and_reuse_released_ones(api: httpx.Client) -> None:
    add_node(api, gpu_node("g2"))
    first = grant(api, resources={"gpu": 1}, node="g2")
    second = grant(api, resources={"gpu": 1}, node="g2")
    assert (first["devices"], second["devices"]) == ({"gpu": ["0"]}, {"gpu": ["1"]})
    r = api.post("/api/v1/allocations", json={"resources": {"gpu": 1}, "node": "g2"})
    assert r.status_code == 409
    assert r.json()["message"] == "Insufficient gpu on node g2: 0 available, 1 requested"
    assert api.delete(f"/api/v1/allocations/{first['id']}").status_code == 200
    assert grant(api, resources={"gpu": 1}, node="g2")["devices"] == {"gpu": ["0"]}


def test_grant_without_a_node_picks_one_that_fits(api: httpx.Client) -> None:
    add_node(api, {"name": "asic-1", "resources": {"cpu": "4", "asic.s19": 4}})
    alloc = grant(api, resources={"asic.s19": "3", "cpu": "500m"})
    assert alloc["node"] == "asic-1"
    assert alloc["resources"] == {"asic.s19": "3", "cpu": "500m"}
    assert alloc["resources_base"] == {"asic.s19": 3, "cpu": 500}
    assert alloc["owner"] is None
    assert alloc["devices"] == {}


def test_quantities_in_many_spellings_mean_the_same_grant(api: httpx.Client) -> None:
    add_node(api, {"name": "sp-1", "resources": {"cpu": "64", "memory": "64Gi"}})
    spellings = [
        {"cpu": 2, "memory": 4294967296},
        {"cpu": 2.0, "memory": "4096Mi"},
        {"cpu": "2000m", "memory": "4Gi"},
        {"cpu": " 2 ", "memory": "4194304Ki"},
    ]
    for resources in spellings:
        alloc = grant(api, resources=resources, node="sp-1")
        assert alloc["resources"] == {"cpu": "2", "memory": "4Gi"}
        assert alloc["resources_base"] == {"cpu": 2000, "memory": 4294967296}


def test_refusal_is_409_listing_every_short_resource(api: httpx.Client) -> None:
    add_node(api, gpu_node("short-1"))
    grant(api, resources={"cpu": "6", "memory": "4Gi", "gpu": 1}, node="short-1")
    r = api.post("/api/v1/allocations", json={
        "resources": {"cpu": "3", "memory": "12Gi", "gpu": 2}, "node": "short-1"
    })
    assert r.status_code == 409
    assert r.json() == {
        "error": "insufficient_resources",
        "message": "Insufficient cpu on node short-1: 2 available, 3 requested; "
        "Insufficient gpu on node short-1: 1 available, 2 requested",
        "shortages": [
            {"node": "short-1", "resource": "cpu", "available": "2", "requested": "3",
             "available_base": 2000, "requested_base": 3000},
            {"node": "short-1", "resource": "gpu", "available": "1", "requested": "2",
             "available_base": 1, "requested_base": 2},
        ],
        "shortages_total": 2,
        "nodes_considered": 1,
        "node_reasons": {},
    }
    # Nothing was taken by the refused request.
    assert api.get("/api/v1/nodes/short-1").json()["available"] == {
        "cpu": "2", "memory": "12Gi", "gpu": "1"
    }


def test_refusal_without_a_node_covers_every_node_considered(server: ServerProcess) -> None:
    with server.client() as api:
        add_node(api, {"name": "a", "resources": {"cpu": "2", "memory": "4Gi"}})
        add_node(api, {"name": "b", "resources": {"cpu": "4", "memory": "1Gi"}})
        add_node(api, {"name": "c", "resources": {"cpu": "8", "memory": "8Gi"},
                       "state": "cordoned"})
        r = api.post("/api/v1/allocations", json={"resources": {"cpu": "3", "memory": "2Gi"}})
    assert r.status_code == 409
    body = r.json()
    assert body["message"] == (
        "Insufficient cpu on node a: 2 available, 3 requested; "
        "Insufficient memory on node b: 1Gi available, 2Gi requested; "
        "Node c is cordoned"
    )
    assert [(s["node"], s["resource"]) for s in body["shortages"]] == [
        ("a", "cpu"), ("b", "memory")
    ]
    assert body["nodes_considered"] == 3
    assert body["node_reasons"] == {"c": "is cordoned"}


def test_a_named_node_that_is_not_ready_refuses(api: httpx.Client) -> None:
    add_node(api, {"name": "drain-1", "resources": {"cpu": "8"}, "state": "draining"})
    r = api.post("/api/v1/allocations", json={"resources": {"cpu": "1"}, "node": "drain-1"})
    assert r.status_code == 409
    assert r.json()["message"] == "Node drain-1 is draining"
    assert r.json()["node_reasons"] == {"drain-1": "is draining"}


def test_a_resource_the_node_does_not_offer_is_409(api: httpx.Client) -> None:
    add_node(api, gpu_node("nofpga-1"))
    r = api.post("/api/v1/allocations", json={"resources": {"fpga": 1}, "node": "nofpga-1"})
    assert r.status_code == 409
    assert r.json() == {
        "error": "unknown_resource",
        "message": "resources.fpga: node nofpga-1 does not offer fpga "
        "(it offers cpu, gpu, memory)",
        "field": "resources.fpga",
        "node": "nofpga-1",
    }


def test_grant_on_an_unknown_node_is_404(api: httpx.Client) -> None:
    r = api.post("/api/v1/allocations", json={"resources": {"cpu": "1"}, "node": "nope-1"})
    assert r.status_code == 404
    assert r.json()["message"] == "node nope-1 not found"


# -- read and list ----------------------------------------------------------------------


def test_unknown_allocation_is_404(api: httpx.Client) -> None:
    r = api.get("/api/v1/allocations/0123abc")
    assert r.status_code == 404
    assert r.json() == {
        "error": "allocation_not_found",
        "message": "allocation 0123abc not found",
        "id": "0123abc",
    }
    assert api.delete("/api/v1/allocations/0123abc").status_code == 404


def test_list_filters_by_node_owner_and_state(api: httpx.Client) -> None:
    add_node(api, {"name": "lf-1", "resources": {"cpu": "16"}})
    add_node(api, {"name": "lf-2", "resources": {"cpu": "16"}})
    a = grant(api, resources={"cpu": "1"}, node="lf-1", owner="lf-alice")
    b = grant(api, resources={"cpu": "2"}, node="lf-1", owner="lf-bob")
    c = grant(api, resources={"cpu": "3"}, node="lf-2", owner="lf-alice")
    assert api.delete(f"/api/v1/allocations/{b['id']}").status_code == 200

    def ids(**params: Any) -> list[str]:
        r = api.get("/api/v1/allocations", params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["count"] == len(body["allocations"])
        return sorted(x["id"] for x in body["allocations"])

    assert ids(node="lf-1") == sorted([a["id"], b["id"]])
    assert ids(node="lf-1", state="active") == [a["id"]]
    assert ids(node="lf-1", state="released") == [b["id"]]
    assert ids(owner="lf-alice") == sorted([a["id"], c["id"]])
    assert ids(owner="lf-alice", node="lf-2") == [c["id"]]
    assert ids(owner="lf-bob", state="active") == []
    newest_first = api.get("/api/v1/allocations", params={"owner": "lf-alice"}).json()
    assert [x["id"] for x in newest_first["allocations"]] == [c["id"], a["id"]]
    page = api.get("/api/v1/allocations", params={"node": "lf-1", "limit": 1}).json()
    assert (page["count"], page["limit"], page["offset"]) == (1, 1, 0)
    assert [x["id"] for x in page["allocations"]] == [b["id"]]
    rest = api.get("/api/v1/allocations", params={"node": "lf-1", "offset": 1}).json()
    assert [x["id"] for x in rest["allocations"]] == [a["id"]]


# -- release ----------------------------------------------------------------------------


def test_release_is_idempotent_and_records_reason_and_time(api: httpx.Client) -> None:
    add_node(api, gpu_node("rel-1"))
    alloc = grant(api, resources={"cpu": "2", "memory": "4Gi", "gpu": 1}, node="rel-1",
                   owner="alice")
    first = api.delete(f"/api/v1/allocations/{alloc['id']}")
    assert first.status_code == 200
    released = first.json()
    assert {k: v for k, v in released.items() if k not in ("state", "reason", "released_at")} == {
        k: v for k, v in alloc.items() if k not in ("state", "reason", "released_at")
    }
    assert (released["state"], released["reason"]) == ("released", "released")
    assert ISO.match(released["released_at"])
    assert released["released_at"] >= released["created_at"]

    second = api.delete(f"/api/v1/allocations/{alloc['id']}")
    assert second.status_code == 200
    assert second.json() == released
    # A later release with another reason does not rewrite history.
    third = api.delete(f"/api/v1/allocations/{alloc['id']}", params={"reason": "failed"})
    assert third.json() == released
    assert api.get(f"/api/v1/allocations/{alloc['id']}").json() == released

    node = api.get("/api/v1/nodes/rel-1").json()
    assert node["allocated_base"] == {"cpu": 0, "memory": 0, "gpu": 0}
    assert node["allocations"] == []
    assert [d["allocation_id"] for d in node["devices"]["gpu"]] == [None, None]


def test_release_with_a_reason(api: httpx.Client) -> None:
    add_node(api, {"name": "why-1", "resources": {"cpu": "2"}})
    alloc = grant(api, resources={"cpu": "1"}, node="why-1")
    r = api.delete(f"/api/v1/allocations/{alloc['id']}", params={"reason": "completed"})
    assert r.status_code == 200
    assert (r.json()["state"], r.json()["reason"]) == ("released", "completed")


def test_released_capacity_can_be_granted_again(api: httpx.Client) -> None:
    add_node(api, {"name": "cycle-1", "resources": {"cpu": "2", "memory": "2Gi"}})
    for _ in range(3):
        alloc = grant(api, resources={"cpu": "2", "memory": "2Gi"}, node="cycle-1")
        r = api.post("/api/v1/allocations", json={"resources": {"cpu": "1"}, "node": "cycle-1"})
        assert r.status_code == 409
        assert api.delete(f"/api/v1/allocations/{alloc['id']}").status_code == 200


# -- capacity summary (its own server: the totals are cluster-wide) ----------------------


def test_capacity_summary_by_facility_type_and_resource(server: ServerProcess) -> None:
    with server.client() as api:
        add_node(api, gpu_node("t1", facility="texas-1"))
        add_node(api, {"name": "t2", "resources": {"cpu": "16", "memory": "32Gi"},
                   "labels": {"facility": "texas-1", "type": "cpu"}})
        add_node(api, {"name": "o1", "resources": {"cpu": "4", "memory": "8Gi"},
                   "labels": {"facility": "oslo-1", "type": "cpu"}})
        grant(api, resources={"cpu": "2", "memory": "4Gi", "gpu": 1}, node="t1")
        grant(api, resources={"cpu": "1", "memory": "2Gi"}, node="o1")
        by = {g: api.get("/api/v1/capacity/summary", params={"group_by": g}).json()
              for g in ("facility", "type", "resource")}
        default = api.get("/api/v1/capacity/summary").json()

    def line(total: str, allocated: str, available: str, base: tuple[int, int, int],
             share: float) -> dict[str, Any]:
        return {"total": total, "allocated": allocated, "available": available,
                "total_base": base[0], "allocated_base": base[1], "available_base": base[2],
                "allocated_share": share}

    assert by["facility"] == {
        "group_by": "facility",
        "groups": [
            {"group": "oslo-1", "nodes": 1, "resources": {
                "cpu": line("4", "1", "3", (4000, 1000, 3000), 0.25),
                "memory": line("8Gi", "2Gi", "6Gi", (8 << 30, 2 << 30, 6 << 30), 0.25),
            }},
            {"group": "texas-1", "nodes": 2, "resources": {
                "cpu": line("24", "2", "22", (24000, 2000, 22000), 0.083333),
                "gpu": line("2", "1", "1", (2, 1, 1), 0.5),
                "memory": line("48Gi", "4Gi", "44Gi", (48 << 30, 4 << 30, 44 << 30), 0.083333),
            }},
        ],
    }
    assert [(g["group"], g["nodes"]) for g in by["type"]["groups"]] == [("cpu", 2), ("gpu", 1)]
    assert by["type"]["groups"][0]["resources"]["cpu"] == line(
        "20", "1", "19", (20000, 1000, 19000), 0.05
    )
    assert by["resource"] == default
    assert by["resource"]["groups"] == [
        {"group": "cpu", "nodes": 3,
         "resources": {"cpu": line("28", "3", "25", (28000, 3000, 25000), 0.107143)}},
        {"group": "gpu", "nodes": 1,
         "resources": {"gpu": line("2", "1", "1", (2, 1, 1), 0.5)}},
        {"group": "memory", "nodes": 3,
         "resources": {"memory": line("56Gi", "6Gi", "50Gi", (56 << 30, 6 << 30, 50 << 30),
                                      0.107143)}},
    ]


def test_racing_releases_of_one_allocation_agree_and_free_it_once(
    shared: ServerProcess, api: httpx.Client
) -> None:
    add_node(api, gpu_node("race-1"))
    allocs = [grant(api, resources={"cpu": "2", "memory": "4Gi", "gpu": 1}, node="race-1")
              for _ in range(2)]

    async def release_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=shared.url, headers=shared.headers,
                                     timeout=60) as c:
            return await asyncio.gather(*[
                c.delete(f"/api/v1/allocations/{allocs[i % 2]['id']}") for i in range(40)
            ])

    responses = asyncio.run(release_all())
    assert [r.status_code for r in responses] == [200] * 40
    for i, alloc in enumerate(allocs):
        bodies = [r.json() for r in responses[i::2]]
        assert all(b == bodies[0] for b in bodies), bodies
        assert (bodies[0]["id"], bodies[0]["state"]) == (alloc["id"], "released")
        assert api.get(f"/api/v1/allocations/{alloc['id']}").json() == bodies[0]
    node = api.get("/api/v1/nodes/race-1").json()
    assert node["allocated_base"] == {"cpu": 0, "memory": 0, "gpu": 0}
    # Freed exactly once: the whole node can be granted, and not a unit more.
    grant(api, resources={"cpu": "8", "memory": "16Gi", "gpu": 2}, node="race-1")
    r = api.post("/api/v1/allocations", json={"resources": {"cpu": "1m"}, "node": "race-1"})
    assert r.status_code == 409


def test_every_field_the_grant_reads_from_the_models_dict_is_there() -> None:
    """``grant_allocation`` reads the body's fields from ``__dict__`` (no
    ``BaseModel.__getattr__``), by name: a field renamed in the model fails
    here, not in production."""
    import inspect

    from apportion.server.routes.allocations import READ_FROM_DICT, grant_allocation
    from apportion.server.schemas import AllocationIn

    read = re.findall(r'fields\["(\w+)"\]', inspect.getsource(grant_allocation))
    assert sorted(read) == sorted(READ_FROM_DICT)
    body = AllocationIn.model_validate(
        {"resources": {"cpu": "1"}, "node": "n1", "owner": "o", "labels": {"k": "v"}})
    assert set(READ_FROM_DICT) <= set(AllocationIn.model_fields)
    for name in READ_FROM_DICT:
        assert body.__dict__[name] == getattr(body, name)
