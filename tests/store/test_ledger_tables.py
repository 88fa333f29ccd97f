"""The store's ledger tables on SQLite and PostgreSQL: round trips, guarded grants,
exactly-once releases, the CHECK constraint, events and hashed tokens."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from apportion.core.model import (
    Allocation,
    AllocationState,
    Device,
    Health,
    Node,
    NodeState,
    ReleaseReason,
)
from apportion.core.records import TokenRecord
from apportion.store import ledger_tables as tables
from apportion.store.database import create_engine, migrate
from apportion.store.event_log import events_after, insert_events, last_event_id
from apportion.store.schema import allocations, devices, node_resources, nodes
from apportion.store.schema import tokens as tokens_table
from apportion.store.tokens import delete_token, find_token, hash_token, insert_token, list_tokens

GiB = 2**30
MAX = 2**63 - 1


@pytest.fixture
def engine(store_url: str) -> Iterator[sa.Engine]:
    engine = create_engine(store_url, sqlite_synchronous="OFF")
    migrate(engine)
    try:
        yield engine
    finally:
        engine.dispose()


GPU_NODE = Node(
    "gpu-1",
    {"cpu": 64000, "memory": 512 * GiB, "gpu": 3},
    {
        "gpu": (
            Device("0", model="A100", memory=80 * GiB, uuid="GPU-aaa", attrs={"nvlink": True}),
            Device("1", model="A100", memory=80 * GiB, uuid="GPU-bbb"),
            Device("2", model="A100", memory=80 * GiB, uuid="GPU-ccc", attrs={"mig": [1, 2]}),
        ),
    },
    labels={"facility": "texas-1", "gpu.model": "A100"},
    specs={"cpu_model": "EPYC 7763", "numa": 2},
    state=NodeState.READY,
    health=Health.HEALTHY,
    created_at=1700000000.25,
    updated_at=1700000001.5,
)
ASIC_NODE = Node(
    "asic-1",
    {"cpu": 4000, "asic.s19": 2},
    {"asic.s19": (Device("s-7", serial="SN7"), Device("s-3", serial="SN3"))},
    labels={"type": "asic"},
    state=NodeState.DRAINING,
    health=Health.DEGRADED,
    created_at=5.0,
    updated_at=6.0,
)
CPU_NODE = Node("cpu-1", {"cpu": 4000, "memory": 8 * GiB}, created_at=1.0, updated_at=1.0)


def _alloc(
    alloc_id: str,
    node: str,
    resources: dict[str, int],
    devs: dict[str, tuple[str, ...]] | None = None,
    owner: str | None = None,
) -> Allocation:
    return Allocation(
        alloc_id,
        node,
        resources,
        devs or {},
        owner,
        {"job": alloc_id},
        AllocationState.ACTIVE,
        10.0,
    )


def _setup(engine: sa.Engine, *node_list: Node) -> None:
    with engine.begin() as conn:
        for node in node_list:
            tables.insert_node(conn, node)


def _allocated(engine: sa.Engine, node: str) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(node_resources.c.resource, node_resources.c.allocated).where(
                node_resources.c.node == node
            )
        )
        return {r: a for r, a in rows}


def _holders(engine: sa.Engine, node: str) -> dict[str, str | None]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(devices.c.device_id, devices.c.allocation_id).where(devices.c.node == node)
        )
        return {d: a for d, a in rows}


def _allocation_ids(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return sorted(conn.execute(sa.select(allocations.c.id)).scalars())


# -- nodes -----------------------------------------------------------------------------------------


def test_nodes_with_devices_round_trip(engine: sa.Engine) -> None:
    _setup(engine, GPU_NODE, ASIC_NODE, CPU_NODE)
    with engine.connect() as conn:
        loaded = {n.name: n for n in tables.load_nodes(conn)}
        only = tables.load_nodes(conn, ["asic-1"])
        none = tables.load_nodes(conn, [])
    assert loaded == {"gpu-1": GPU_NODE, "asic-1": ASIC_NODE, "cpu-1": CPU_NODE}
    # devices keep their declared order, not their id order
    assert [d.id for d in loaded["asic-1"].devices["asic.s19"]] == ["s-7", "s-3"]
    assert only == [ASIC_NODE]
    assert none == []
    assert _allocated(engine, "gpu-1") == {"cpu": 0, "memory": 0, "gpu": 0}
    assert _holders(engine, "gpu-1") == {"0": None, "1": None, "2": None}


def test_largest_quantity_round_trips(engine: sa.Engine) -> None:
    node = Node("big", {"memory": MAX, "cpu": MAX}, created_at=1.0, updated_at=1.0)
    _setup(engine, node)
    alloc = _alloc("a1", "big", {"memory": MAX, "cpu": MAX - 1})
    with engine.begin() as conn:
        assert tables.apply_grant(conn, alloc) is True
    with engine.connect() as conn:
        assert tables.load_nodes(conn) == [node]
        assert tables.load_allocation(conn, "a1") == alloc
    assert _allocated(engine, "big") == {"memory": MAX, "cpu": MAX - 1}


def test_duplicate_node_is_refused(engine: sa.Engine) -> None:
    _setup(engine, CPU_NODE)
    with pytest.raises(IntegrityError), engine.begin() as conn:
        tables.insert_node(conn, CPU_NODE)


def test_set_node_state(engine: sa.Engine) -> None:
    _setup(engine, CPU_NODE)
    with engine.begin() as conn:
        tables.set_node_state(conn, "cpu-1", NodeState.CORDONED, 99.0)
    with engine.connect() as conn:
        (node,) = tables.load_nodes(conn)
    assert (node.state, node.updated_at, node.created_at) == (NodeState.CORDONED, 99.0, 1.0)


def test_update_node_keeps_allocated_and_device_holders(engine: sa.Engine) -> None:
    _setup(engine, GPU_NODE)
    alloc = _alloc("a1", "gpu-1", {"cpu": 1000, "gpu": 2}, {"gpu": ("0", "2")})
    with engine.begin() as conn:
        assert tables.apply_grant(conn, alloc) is True
    updated = Node(
        "gpu-1",
        {"cpu": 32000, "gpu": 4, "fpga": 1},
        {
            "gpu": (
                Device("2", model="A100"),
                Device("0", model="A100"),
                Device("1", model="A100"),
                Device("3", model="H100", memory=80 * GiB),
            )
        },
        labels={"facility": "texas-2"},
        specs={},
        state=NodeState.DRAINING,
        health=Health.DEGRADED,
        created_at=GPU_NODE.created_at,
        updated_at=1800000000.0,
    )
    with engine.begin() as conn:
        tables.update_node(conn, updated)
    with engine.connect() as conn:
        assert tables.load_nodes(conn) == [updated]
    assert _allocated(engine, "gpu-1") == {"cpu": 1000, "gpu": 2, "fpga": 0}
    assert _holders(engine, "gpu-1") == {"0": "a1", "1": None, "2": "a1", "3": None}
    with engine.begin() as conn:
        assert tables.apply_release(conn, alloc.released(ReleaseReason.COMPLETED, 20.0)) is True
    assert _allocated(engine, "gpu-1") == {"cpu": 0, "gpu": 0, "fpga": 0}
    assert _holders(engine, "gpu-1") == {"0": None, "1": None, "2": None, "3": None}


def test_update_node_below_allocated_hits_the_check(engine: sa.Engine) -> None:
    _setup(engine, CPU_NODE)
    with engine.begin() as conn:
        assert tables.apply_grant(conn, _alloc("a1", "cpu-1", {"cpu": 3000})) is True
    with pytest.raises(IntegrityError), engine.begin() as conn:
        tables.update_node(conn, Node("cpu-1", {"cpu": 2000}, created_at=1.0, updated_at=2.0))
    assert _allocated(engine, "cpu-1") == {"cpu": 3000, "memory": 0}


def test_delete_node(engine: sa.Engine) -> None:
    _setup(engine, GPU_NODE, CPU_NODE)
    alloc = _alloc("a1", "gpu-1", {"gpu": 1}, {"gpu": ("0",)})
    with engine.begin() as conn:
        assert tables.apply_grant(conn, alloc) is True
        assert tables.apply_release(conn, alloc.released(ReleaseReason.NODE_DELETED, 11.0))
        tables.delete_node(conn, "gpu-1")
    with engine.connect() as conn:
        assert [n.name for n in tables.load_nodes(conn)] == ["cpu-1"]
        assert (
            conn.execute(
                sa.select(sa.func.count())
                .select_from(node_resources)
                .where(node_resources.c.node == "gpu-1")
            ).scalar_one()
            == 0
        )
        assert conn.execute(sa.select(sa.func.count()).select_from(devices)).scalar_one() == 0
        # the allocation's history stays
        released = tables.load_allocation(conn, "a1")
    assert released is not None
    assert (released.state, released.reason) == (
        AllocationState.RELEASED,
        ReleaseReason.NODE_DELETED,
    )
    assert _allocated(engine, "cpu-1") == {"cpu": 0, "memory": 0}
    _setup(engine, GPU_NODE)  # the name is free again
    assert _allocated(engine, "gpu-1") == {"cpu": 0, "memory": 0, "gpu": 0}


# -- grants ----------------------------------------------------------------------------------------


def test_grant_records_balances_devices_and_row(engine: sa.Engine) -> None:
    _setup(engine, GPU_NODE, CPU_NODE)
    a1 = _alloc("a1", "gpu-1", {"cpu": 8000, "memory": 64 * GiB, "gpu": 2}, {"gpu": ("0", "1")})
    a2 = _alloc("a2", "cpu-1", {"cpu": 4000}, owner="alice")
    with engine.begin() as conn:
        assert tables.apply_grant(conn, a1) is True
        assert tables.apply_grant(conn, a2) is True
    assert _allocated(engine, "gpu-1") == {"cpu": 8000, "memory": 64 * GiB, "gpu": 2}
    assert _allocated(engine, "cpu-1") == {"cpu": 4000, "memory": 0}
    assert _holders(engine, "gpu-1") == {"0": "a1", "1": "a1", "2": None}
    with engine.connect() as conn:
        assert tables.load_allocation(conn, "a1") == a1
        assert tables.load_allocation(conn, "nope") is None
        assert sorted(a.id for a in tables.load_active_allocations(conn)) == ["a1", "a2"]
        assert tables.load_active_allocations(conn, ["cpu-1"]) == [a2]
        assert tables.list_allocations(conn, owner="alice") == [a2]
        assert tables.list_allocations(conn, node="gpu-1", state="active") == [a1]


@pytest.mark.parametrize(
    ("request_", "devs"),
    [
        ({"cpu": 1000, "memory": 16 * GiB}, {}),  # the second resource is short
        ({"memory": 16 * GiB, "cpu": 1000}, {}),  # the first resource is short
        ({"cpu": 4001}, {}),
        ({"cpu": 1000, "fpga": 1}, {}),  # a resource the node does not offer
        ({"cpu": 1000, "memory": GiB, "gpu": 1}, {"gpu": ("0",)}),  # no gpu row on cpu-1
    ],
)
def test_grant_over_capacity_leaves_no_trace(
    engine: sa.Engine, request_: dict[str, int], devs: dict[str, tuple[str, ...]]
) -> None:
    _setup(engine, CPU_NODE)
    with engine.begin() as conn:
        assert tables.apply_grant(conn, _alloc("a0", "cpu-1", {"cpu": 3000, "memory": GiB}))
    before = _allocated(engine, "cpu-1")
    assert before == {"cpu": 3000, "memory": GiB}
    with engine.begin() as conn:
        assert tables.apply_grant(conn, _alloc("a1", "cpu-1", request_, devs)) is False
    assert _allocated(engine, "cpu-1") == before
    assert _allocation_ids(engine) == ["a0"]


def test_grant_of_a_taken_device_leaves_no_trace(engine: sa.Engine) -> None:
    _setup(engine, GPU_NODE)
    with engine.begin() as conn:
        assert tables.apply_grant(conn, _alloc("a1", "gpu-1", {"gpu": 1}, {"gpu": ("1",)}))
    # Memory believed devices 0 and 1 free; the store knows 1 is held.
    stale = _alloc("a2", "gpu-1", {"cpu": 1000, "gpu": 2}, {"gpu": ("0", "1")})
    with engine.begin() as conn:
        assert tables.apply_grant(conn, stale) is False
    assert _allocated(engine, "gpu-1") == {"cpu": 0, "memory": 0, "gpu": 1}
    assert _holders(engine, "gpu-1") == {"0": None, "1": "a1", "2": None}
    assert _allocation_ids(engine) == ["a1"]


def test_grant_of_an_unknown_device_leaves_no_trace(engine: sa.Engine) -> None:
    _setup(engine, GPU_NODE)
    ghost = _alloc("a1", "gpu-1", {"gpu": 1}, {"gpu": ("7",)})
    with engine.begin() as conn:
        assert tables.apply_grant(conn, ghost) is False
    assert _allocated(engine, "gpu-1") == {"cpu": 0, "memory": 0, "gpu": 0}
    assert _holders(engine, "gpu-1") == {"0": None, "1": None, "2": None}
    assert _allocation_ids(engine) == []


def test_grant_fills_exactly_to_capacity(engine: sa.Engine) -> None:
    _setup(engine, CPU_NODE)
    with engine.begin() as conn:
        assert tables.apply_grant(conn, _alloc("a1", "cpu-1", {"cpu": 2500}))
        assert tables.apply_grant(conn, _alloc("a2", "cpu-1", {"cpu": 1500}))
        assert tables.apply_grant(conn, _alloc("a3", "cpu-1", {"cpu": 1})) is False
    assert _allocated(engine, "cpu-1") == {"cpu": 4000, "memory": 0}
    assert _allocation_ids(engine) == ["a1", "a2"]


@pytest.mark.parametrize("allocated", [4001, -1])
def test_check_constraint_refuses_a_direct_update(engine: sa.Engine, allocated: int) -> None:
    _setup(engine, CPU_NODE)
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(
            node_resources.update()
            .where(node_resources.c.node == "cpu-1", node_resources.c.resource == "cpu")
            .values(allocated=allocated)
        )
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(
            node_resources.insert().values(
                node="cpu-1",
                resource="gpu",
                capacity=1,
                allocated=allocated if allocated < 0 else 2,
            )
        )
    assert _allocated(engine, "cpu-1") == {"cpu": 0, "memory": 0}


def test_grant_past_the_largest_sum_is_refused_not_an_error(engine: sa.Engine) -> None:
    # allocated + q would pass 2^63-1; PostgreSQL must answer "no", not "bigint out of range".
    _setup(engine, Node("big", {"license.matlab": MAX}, created_at=1.0, updated_at=1.0))
    with engine.begin() as conn:
        assert tables.apply_grant(conn, _alloc("a1", "big", {"license.matlab": MAX - 1}))
    with engine.begin() as conn:
        assert tables.apply_grant(conn, _alloc("a2", "big", {"license.matlab": 2})) is False
        assert tables.apply_grant(conn, _alloc("a3", "big", {"license.matlab": MAX})) is False
        assert tables.apply_grant(conn, _alloc("a4", "big", {"license.matlab": 1})) is True
    assert _allocated(engine, "big") == {"license.matlab": MAX}
    assert _allocation_ids(engine) == ["a1", "a4"]


def test_lock_nodes_runs_on_both_backends(engine: sa.Engine) -> None:
    _setup(engine, CPU_NODE, GPU_NODE)
    with engine.begin() as conn:
        tables.lock_nodes(conn, ["gpu-1", "cpu-1", "gpu-1"])
        assert tables.apply_grant(conn, _alloc("a1", "cpu-1", {"cpu": 1000})) is True
    assert _allocated(engine, "cpu-1") == {"cpu": 1000, "memory": 0}


# -- releases --------------------------------------------------------------------------------------


def test_release_applies_exactly_once(engine: sa.Engine) -> None:
    _setup(engine, GPU_NODE)
    a1 = _alloc("a1", "gpu-1", {"cpu": 2000, "gpu": 1}, {"gpu": ("0",)})
    a2 = _alloc("a2", "gpu-1", {"cpu": 3000, "gpu": 1}, {"gpu": ("1",)})
    with engine.begin() as conn:
        assert tables.apply_grant(conn, a1) is True
        assert tables.apply_grant(conn, a2) is True
    released = a1.released(ReleaseReason.COMPLETED, 42.5)
    with engine.begin() as conn:
        assert tables.apply_release(conn, released) is True
    after_first = _allocated(engine, "gpu-1")
    assert after_first == {"cpu": 3000, "memory": 0, "gpu": 1}
    assert _holders(engine, "gpu-1") == {"0": None, "1": "a2", "2": None}
    with engine.begin() as conn:
        assert tables.apply_release(conn, released) is False
        assert tables.apply_release(conn, a1.released(ReleaseReason.FAILED, 50.0)) is False
    assert _allocated(engine, "gpu-1") == after_first
    assert _holders(engine, "gpu-1") == {"0": None, "1": "a2", "2": None}
    with engine.connect() as conn:
        stored = tables.load_allocation(conn, "a1")
        assert [a.id for a in tables.load_active_allocations(conn)] == ["a2"]
        assert [a.id for a in tables.list_allocations(conn, state="released")] == ["a1"]
    # the first release's reason and time are what stays
    assert stored == released
    assert (stored.reason, stored.released_at) == (ReleaseReason.COMPLETED, 42.5)


def test_release_of_an_unknown_allocation_is_false(engine: sa.Engine) -> None:
    _setup(engine, CPU_NODE)
    ghost = _alloc("ghost", "cpu-1", {"cpu": 1000}).released(ReleaseReason.CANCELLED, 1.0)
    with engine.begin() as conn:
        assert tables.apply_release(conn, ghost) is False
    assert _allocated(engine, "cpu-1") == {"cpu": 0, "memory": 0}


def test_rolled_back_grant_leaves_nothing(engine: sa.Engine) -> None:
    _setup(engine, GPU_NODE)
    with pytest.raises(RuntimeError), engine.begin() as conn:
        assert tables.apply_grant(conn, _alloc("a1", "gpu-1", {"gpu": 1}, {"gpu": ("0",)}))
        raise RuntimeError("the batch failed")
    assert _allocated(engine, "gpu-1") == {"cpu": 0, "memory": 0, "gpu": 0}
    assert _holders(engine, "gpu-1") == {"0": None, "1": None, "2": None}
    assert _allocation_ids(engine) == []


def test_list_allocations_pages_newest_first(engine: sa.Engine) -> None:
    _setup(engine, CPU_NODE)
    with engine.begin() as conn:
        for i in range(5):
            alloc = Allocation(
                f"a{i}", "cpu-1", {"cpu": 100}, {}, None, {}, AllocationState.ACTIVE, float(i)
            )
            assert tables.apply_grant(conn, alloc) is True
    with engine.connect() as conn:
        first = tables.list_allocations(conn, limit=2)
        second = tables.list_allocations(conn, limit=2, offset=2)
    assert [a.id for a in first] == ["a4", "a3"]
    assert [a.id for a in second] == ["a2", "a1"]


# -- events ----------------------------------------------------------------------------------------


def test_events_read_back_in_order(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        assert last_event_id(conn) == 0
        assert events_after(conn, 0) == []
    rows = [
        {
            "kind": "node.registered",
            "subject": "n1",
            "origin": "s1",
            "data": {"cpu": "4"},
            "at": 1.5,
        },
        {"kind": "allocation.granted", "subject": "a1", "origin": "s1", "data": {}, "at": 2.0},
        {
            "kind": "allocation.released",
            "subject": "a1",
            "origin": "s2",
            "data": {"why": "x"},
            "at": 3.0,
        },
    ]
    with engine.begin() as conn:
        insert_events(conn, rows[:2])
        insert_events(conn, [])
    with engine.begin() as conn:
        insert_events(conn, rows[2:])
    with engine.connect() as conn:
        everything = events_after(conn, 0)
        last = last_event_id(conn)
        later = events_after(conn, everything[0].id)
        limited = events_after(conn, 0, limit=1)
    assert [(e.kind, e.subject, e.origin, e.data, e.at) for e in everything] == [
        ("node.registered", "n1", "s1", {"cpu": "4"}, 1.5),
        ("allocation.granted", "a1", "s1", {}, 2.0),
        ("allocation.released", "a1", "s2", {"why": "x"}, 3.0),
    ]
    ids = [e.id for e in everything]
    assert ids == sorted(ids)
    assert len(set(ids)) == 3
    assert last == ids[-1]
    assert later == everything[1:]
    assert limited == everything[:1]


def _event(subject: str) -> dict[str, Any]:
    return {"kind": "node.updated", "subject": subject, "origin": "s", "data": {}, "at": 1.0}


@pytest.mark.postgres
def test_polling_after_an_id_never_skips_a_slow_commit(pg_url: str) -> None:
    engine = create_engine(pg_url)
    migrate(engine)
    try:
        slow = engine.connect()
        slow_tx = slow.begin()
        insert_events(slow, [_event("slow")])  # takes the lower id, commits last
        fast_pid: list[int] = []
        fast_done = threading.Event()

        def fast_writer() -> None:
            with engine.begin() as conn:
                fast_pid.append(conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())
                insert_events(conn, [_event("fast")])
            fast_done.set()

        thread = threading.Thread(target=fast_writer)
        thread.start()
        # Wait until the fast writer has committed, or is blocked behind the slow one
        # (a fix may serialize event writers); never decide on elapsed time alone.
        with engine.connect() as probe:
            for _ in range(3000):
                if fast_done.is_set():
                    break
                if fast_pid:
                    waiting = probe.execute(
                        sa.text("SELECT wait_event_type FROM pg_stat_activity WHERE pid = :p"),
                        {"p": fast_pid[0]},
                    ).scalar()
                    probe.rollback()
                    if waiting == "Lock":
                        break
                time.sleep(0.01)
        with engine.connect() as reader:
            seen = events_after(reader, 0)
        last = seen[-1].id if seen else 0
        slow_tx.commit()
        slow.close()
        thread.join()
        with engine.connect() as reader:
            seen += events_after(reader, last)
        assert sorted(e.subject for e in seen) == ["fast", "slow"]
    finally:
        engine.dispose()


# -- tokens ----------------------------------------------------------------------------------------


def test_tokens_are_stored_hashed(engine: sa.Engine) -> None:
    plain = "apt_0123456789abcdefghijklmnopqrstuvwxyz"
    record = TokenRecord("t1", "ci-bot", "operator", 100.0)
    with engine.begin() as conn:
        insert_token(conn, record, plain)
        insert_token(conn, TokenRecord("t2", "viewer", "viewer", 200.0), "another-secret")
    with engine.connect() as conn:
        rows = conn.execute(sa.select(tokens_table).order_by(tokens_table.c.id)).all()
        found = find_token(conn, plain)
        wrong = find_token(conn, plain + "x")
        hashed = find_token(conn, hash_token(plain))
        listed = list_tokens(conn)
    assert [tuple(r) for r in rows] == [  # the last column: when a session ends (None: never)
        ("t1", "ci-bot", "operator", hash_token(plain), 100.0, None),
        ("t2", "viewer", "viewer", hash_token("another-secret"), 200.0, None),
    ]
    assert all(plain not in str(value) for row in rows for value in row)
    assert found == record
    assert wrong is None
    assert hashed is None  # knowing the stored hash does not authenticate
    assert [t.id for t in listed] == ["t1", "t2"]
    with engine.begin() as conn:
        assert delete_token(conn, "t1") is True
        assert delete_token(conn, "t1") is False
        assert find_token(conn, plain) is None


def test_hash_token_is_sha256_hex() -> None:
    assert hash_token("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_the_same_token_cannot_be_stored_twice(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        insert_token(conn, TokenRecord("t1", "a", "admin", 1.0), "same")
    with pytest.raises(IntegrityError), engine.begin() as conn:
        insert_token(conn, TokenRecord("t2", "b", "admin", 2.0), "same")


def test_nodes_table_columns_hold_what_was_written(engine: sa.Engine) -> None:
    _setup(engine, ASIC_NODE)
    with engine.connect() as conn:
        row = conn.execute(sa.select(nodes)).one()
    assert tuple(row) == ("asic-1", {"type": "asic"}, {}, "draining", "degraded", 5.0, 6.0)


def test_a_release_waiting_on_a_node_rewrite_still_returns_its_balance(
        engine: sa.Engine) -> None:
    """A node rewritten (an agent registering again) while another server
    releases on it: the release waits on the rewrite's lock and must still
    find its balance row (the rewrite once deleted and re-inserted rows, and
    on PostgreSQL the waiting release then updated nothing)."""
    with engine.begin() as conn:
        tables.insert_node(conn, GPU_NODE)
        held = Allocation("a1", "gpu-1", {"cpu": 1000, "gpu": 1}, {"gpu": ("0",)}, None, {},
                          AllocationState.ACTIVE, 1.0)
        assert tables.apply_grant(conn, held)
    rewrite = engine.connect()
    tx = rewrite.begin()
    tables.lock_nodes(rewrite, ["gpu-1"])
    tables.update_node(rewrite, GPU_NODE)
    done = threading.Event()

    def release() -> None:
        with engine.begin() as conn:
            assert tables.apply_release(conn, held.released(ReleaseReason.RELEASED, 2.0))
        done.set()

    worker = threading.Thread(target=release)
    worker.start()
    assert not done.wait(0.3)  # it waits for the rewrite's transaction
    tx.commit()
    rewrite.close()
    worker.join(20)
    assert done.is_set()
    with engine.connect() as conn:
        balances = dict(conn.execute(sa.select(node_resources.c.resource,
                                               node_resources.c.allocated)).all())
        holders = conn.execute(sa.select(devices.c.allocation_id)
                               .where(devices.c.allocation_id.is_not(None))).all()
    assert (balances["cpu"], balances["gpu"], holders) == (0, 0, [])
