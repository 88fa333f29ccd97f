"""Reading and writing nodes and allocations with SQLAlchemy Core.

Every function takes an open connection inside the caller's transaction, so
the service decides what commits together (one batch of grants, one fsync).
Grants check capacity in the UPDATE itself, so two servers on one
PostgreSQL cannot both win the last unit; releases flip ``state`` from
``active`` first, so a release is applied once however often it is asked.
"""

from __future__ import annotations

import contextlib
import functools
import operator
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import orjson
import sqlalchemy as sa

from apportion.core.model import (
    ACTIVE,
    Allocation,
    AllocationState,
    Device,
    Health,
    Node,
    NodeState,
    ReleaseReason,
)
from apportion.store.database import driver_error
from apportion.store.schema import allocations, devices, node_resources, nodes


class BalanceMissing(sa.exc.OperationalError):
    """A release found no balance row to return to (a concurrent rewrite of
    the node): raised as an OperationalError so the whole transaction is
    rolled back and tried again."""

    def __init__(self, message: str) -> None:
        super().__init__(message, None, Exception(message))


_GRANT_UPDATE = (
    node_resources.update()
    .where(
        node_resources.c.node == sa.bindparam("n"),
        node_resources.c.resource == sa.bindparam("r"),
        # capacity - q, not allocated + q: the sum can pass 2^63-1, which
        # PostgreSQL refuses with an error instead of a non-match.
        node_resources.c.allocated <= node_resources.c.capacity - sa.bindparam("q"),
    )
    .values(allocated=node_resources.c.allocated + sa.bindparam("q"))
)
_RETURN_UPDATE = (
    node_resources.update()
    .where(
        node_resources.c.node == sa.bindparam("n"), node_resources.c.resource == sa.bindparam("r")
    )
    .values(allocated=node_resources.c.allocated - sa.bindparam("q"))
)
_TAKE_DEVICE = (
    devices.update()
    .where(
        devices.c.node == sa.bindparam("n"),
        devices.c.resource == sa.bindparam("r"),
        devices.c.device_id == sa.bindparam("d"),
        devices.c.allocation_id.is_(None),
    )
    .values(allocation_id=sa.bindparam("a"))
)
_FREE_DEVICES = (
    devices.update().where(devices.c.allocation_id == sa.bindparam("a")).values(allocation_id=None)
)
_MARK_RELEASED = (
    allocations.update()
    .where(allocations.c.id == sa.bindparam("i"), allocations.c.state == "active")
    .values(state="released", reason=sa.bindparam("why"), released_at=sa.bindparam("at"))
)


# -- nodes ------------------------------------------------------------------


def load_nodes(conn: sa.Connection, names: Sequence[str] | None = None) -> list[Node]:
    query = sa.select(nodes)
    if names is not None:
        query = query.where(nodes.c.name.in_(list(names)))
    rows = conn.execute(query).all()
    caps: dict[str, dict[str, int]] = {}
    rq = sa.select(node_resources.c.node, node_resources.c.resource, node_resources.c.capacity)
    dq = sa.select(devices).order_by(devices.c.node, devices.c.resource, devices.c.position)
    if names is not None:
        rq = rq.where(node_resources.c.node.in_(list(names)))
        dq = dq.where(devices.c.node.in_(list(names)))
    for node, resource, capacity in conn.execute(rq):
        caps.setdefault(node, {})[resource] = capacity
    devs: dict[str, dict[str, list[Device]]] = {}
    for d in conn.execute(dq):
        device = Device(d.device_id, d.model, d.memory, d.uuid, d.serial, d.attrs or {})
        devs.setdefault(d.node, {}).setdefault(d.resource, []).append(device)
    return [
        Node(
            r.name,
            caps.get(r.name, {}),
            {res: tuple(ds) for res, ds in devs.get(r.name, {}).items()},
            r.labels,
            r.specs,
            NodeState(r.state),
            Health(r.health),
            r.created_at,
            r.updated_at,
        )
        for r in rows
    ]


def insert_node(conn: sa.Connection, node: Node) -> None:
    conn.execute(
        nodes.insert().values(
            name=node.name,
            labels=node.labels,
            specs=node.specs,
            state=node.state.value,
            health=node.health.value,
            created_at=node.created_at,
            updated_at=node.updated_at,
        )
    )
    _write_capacity(conn, node, {})
    _write_devices(conn, node, {})


def update_node(conn: sa.Connection, node: Node) -> None:
    """Rewrite a node; allocated amounts and device holders are kept as stored.

    Rows are changed in place, never deleted and inserted again: on
    PostgreSQL a concurrent release waiting on a row that is deleted under
    it updates nothing, and the balance it should have returned is lost."""
    conn.execute(
        nodes.update()
        .where(nodes.c.name == node.name)
        .values(
            labels=node.labels,
            specs=node.specs,
            state=node.state.value,
            health=node.health.value,
            updated_at=node.updated_at,
        )
    )
    _rewrite_capacity(conn, node)
    _rewrite_devices(conn, node)


def _rewrite_capacity(conn: sa.Connection, node: Node) -> None:
    stored = {r for (r,) in conn.execute(
        sa.select(node_resources.c.resource).where(node_resources.c.node == node.name))}
    for r, cap in node.resources.items():
        if r in stored:
            conn.execute(node_resources.update().where(
                node_resources.c.node == node.name, node_resources.c.resource == r,
            ).values(capacity=cap))
        else:
            conn.execute(node_resources.insert().values(
                node=node.name, resource=r, capacity=cap, allocated=0))
    gone = stored - set(node.resources)
    if gone:
        conn.execute(node_resources.delete().where(
            node_resources.c.node == node.name, node_resources.c.resource.in_(gone)))


def _rewrite_devices(conn: sa.Connection, node: Node) -> None:
    stored = {(r, d) for r, d in conn.execute(
        sa.select(devices.c.resource, devices.c.device_id).where(devices.c.node == node.name))}
    wanted = set()
    for r, ds in node.devices.items():
        for i, d in enumerate(ds):
            wanted.add((r, d.id))
            values = {"position": i, "model": d.model, "memory": d.memory, "uuid": d.uuid,
                      "serial": d.serial, "attrs": d.attrs}
            if (r, d.id) in stored:
                conn.execute(devices.update().where(
                    devices.c.node == node.name, devices.c.resource == r,
                    devices.c.device_id == d.id).values(values))
            else:
                conn.execute(devices.insert().values(node=node.name, resource=r, device_id=d.id,
                                                     allocation_id=None, **values))
    for r, d in stored - wanted:
        conn.execute(devices.delete().where(
            devices.c.node == node.name, devices.c.resource == r, devices.c.device_id == d))


def set_node_state(conn: sa.Connection, name: str, state: NodeState, now: float) -> None:
    conn.execute(
        nodes.update().where(nodes.c.name == name).values(state=state.value, updated_at=now)
    )


def delete_node(conn: sa.Connection, name: str) -> None:
    conn.execute(devices.delete().where(devices.c.node == name))
    conn.execute(node_resources.delete().where(node_resources.c.node == name))
    conn.execute(nodes.delete().where(nodes.c.name == name))


def _write_capacity(conn: sa.Connection, node: Node, allocated: dict[str, int]) -> None:
    rows = [
        {"node": node.name, "resource": r, "capacity": cap, "allocated": allocated.get(r, 0)}
        for r, cap in node.resources.items()
    ]
    if rows:
        conn.execute(node_resources.insert(), rows)


def _write_devices(conn: sa.Connection, node: Node, holders: dict[tuple[str, str], Any]) -> None:
    rows = [
        {
            "node": node.name,
            "resource": r,
            "device_id": d.id,
            "position": i,
            "model": d.model,
            "memory": d.memory,
            "uuid": d.uuid,
            "serial": d.serial,
            "attrs": d.attrs,
            "allocation_id": holders.get((r, d.id)),
        }
        for r, ds in node.devices.items()
        for i, d in enumerate(ds)
    ]
    if rows:
        conn.execute(devices.insert(), rows)


def lock_nodes(conn: sa.Connection, names: Iterable[str]) -> None:
    """Take the row locks of these nodes in one sorted order, so two servers'
    batches touching the same nodes queue instead of deadlocking (PostgreSQL;
    SQLite's single writer lock already serializes)."""
    if conn.dialect.name != "postgresql":
        return
    conn.execute(
        sa.select(node_resources.c.node)
        .where(node_resources.c.node.in_(sorted(set(names))))
        .order_by(node_resources.c.node, node_resources.c.resource)
        .with_for_update()
    ).all()


# -- allocations ------------------------------------------------------------


_INSERT_ALLOCATION = allocations.insert()


def apply_grant(conn: sa.Connection, alloc: Allocation) -> bool:
    """Record a grant if the stored balances allow it; False leaves no trace."""
    done: list[tuple[str, int]] = []
    for r, q in alloc.resources.items():
        if conn.execute(_GRANT_UPDATE, {"n": alloc.node, "r": r, "q": q}).rowcount != 1:
            _undo_grant(conn, alloc, done)
            return False
        done.append((r, q))
    for r, ids in alloc.devices.items():
        for d in ids:
            hit = conn.execute(_TAKE_DEVICE, {"n": alloc.node, "r": r, "d": d, "a": alloc.id})
            if hit.rowcount != 1:
                _undo_grant(conn, alloc, done)
                return False
    conn.execute(_INSERT_ALLOCATION, _allocation_row(alloc))
    return True


def _undo_grant(conn: sa.Connection, alloc: Allocation, done: list[tuple[str, int]]) -> None:
    for r, q in done:
        conn.execute(_RETURN_UPDATE, {"n": alloc.node, "r": r, "q": q})
    conn.execute(_FREE_DEVICES, {"a": alloc.id})


def apply_release(conn: sa.Connection, alloc: Allocation) -> bool:
    """Mark an allocation released and return its resources, exactly once:
    False when the stored row was no longer active."""
    assert alloc.reason is not None
    hit = conn.execute(
        _MARK_RELEASED, {"i": alloc.id, "why": alloc.reason.value, "at": alloc.released_at}
    )
    if hit.rowcount != 1:
        return False
    for r, q in alloc.resources.items():
        if conn.execute(_RETURN_UPDATE, {"n": alloc.node, "r": r, "q": q}).rowcount != 1:
            # The balance row went away under us: never mark a release whose
            # resources were not given back. The caller's transaction fails.
            raise BalanceMissing(f"node {alloc.node} has no {r} balance to return "
                                 f"allocation {alloc.id} to")
    if alloc.devices:
        conn.execute(_FREE_DEVICES, {"a": alloc.id})
    return True


def _allocation_row(alloc: Allocation) -> dict[str, Any]:
    return {
        "id": alloc.id,
        "node": alloc.node,
        "owner": alloc.owner,
        "resources": dict(alloc.resources),
        "devices": {r: list(ids) for r, ids in alloc.devices.items()},
        "labels": alloc.labels,
        "state": alloc.state.value,
        "reason": alloc.reason.value if alloc.reason else None,
        "created_at": alloc.created_at,
        "released_at": alloc.released_at,
    }


def allocation_from_row(row: Any) -> Allocation:
    return Allocation(
        row.id,
        row.node,
        row.resources,
        {r: tuple(ids) for r, ids in row.devices.items()},
        row.owner,
        row.labels,
        AllocationState(row.state),
        row.created_at,
        ReleaseReason(row.reason) if row.reason else None,
        row.released_at,
    )


_LOAD_ALLOCATION = sa.select(allocations).where(allocations.c.id == sa.bindparam("b_id"))


def load_allocation(conn: sa.Connection, alloc_id: str) -> Allocation | None:
    row = conn.execute(_LOAD_ALLOCATION, {"b_id": alloc_id}).first()
    return allocation_from_row(row) if row else None


def load_active_allocations(
    conn: sa.Connection, node_names: Sequence[str] | None = None
) -> list[Allocation]:
    query = sa.select(allocations).where(allocations.c.state == "active")
    if node_names is not None:
        query = query.where(allocations.c.node.in_(list(node_names)))
    return [allocation_from_row(r) for r in conn.execute(query)]


def list_allocations(
    conn: sa.Connection,
    *,
    node: str | None = None,
    owner: str | None = None,
    state: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[Allocation]:
    query = sa.select(allocations)
    if node is not None:
        query = query.where(allocations.c.node == node)
    if owner is not None:
        query = query.where(allocations.c.owner == owner)
    if state is not None:
        query = query.where(allocations.c.state == state)
    query = (
        query.order_by(allocations.c.created_at.desc(), allocations.c.id)
        .limit(limit)
        .offset(offset)
    )
    return [allocation_from_row(r) for r in conn.execute(query)]


# -- batches ----------------------------------------------------------------
#
# A batch is written with a handful of statements whatever its size: each
# statement is one round trip to PostgreSQL and one GIL release in sqlite3,
# and a writer thread that releases the GIL hundreds of times per batch
# spends most of its time waiting to get it back from the request thread.


_CURSOR = "apportion.driver_cursor"
"""The key in a connection's ``info`` of the driver cursor that ``on_cursor``
lends to the batch statements below."""


@contextlib.contextmanager
def on_cursor(conn: sa.Connection) -> Iterator[None]:
    """The batch statements below run on one driver cursor while this lasts,
    not through SQLAlchemy's ``exec_driver_sql``: its execution context, result
    object and event dispatch cost more per statement than SQLite's work for
    a dozen grants (the committer's batch, ``store/batches.py``)."""
    conn.info[_CURSOR] = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        yield
    finally:
        conn.info.pop(_CURSOR).close()


def _execute(conn: sa.Connection, sql: str, params: tuple[Any, ...]) -> int:
    """Run ``sql``; its rowcount. Driver errors are raised as SQLAlchemy's
    (``OperationalError``, ``IntegrityError``...), cursor lent or not: the
    committer retries on those."""
    cursor = conn.info.get(_CURSOR)
    if cursor is None:
        return int(conn.exec_driver_sql(sql, params).rowcount)
    try:
        cursor.execute(sql, params)
    except conn.dialect.loaded_dbapi.Error as exc:
        raise driver_error(conn, sql, params, exc) from exc
    return int(cursor.rowcount)


def _placeholder(conn: sa.Connection) -> str:
    return "?" if conn.dialect.paramstyle == "qmark" else "%s"


def _values(conn: sa.Connection, casts: Sequence[str], count: int) -> str:
    """``count`` VALUES tuples of placeholders, cast where PostgreSQL needs a type."""
    mark = _placeholder(conn)
    cells = ", ".join(f"CAST({mark} AS {c})" if c else mark for c in casts)
    return ", ".join([f"({cells})"] * count)


PARAMETERS_PER_STATEMENT = 30_000
"""The most values one multi-row statement binds: SQLite refuses more than
32,766 by default (``SQLITE_MAX_VARIABLE_NUMBER``; some builds allow more),
PostgreSQL's protocol 65,535. A batch's rows (a committer batch of many
units' grants) may need several statements; the callers' all-or-nothing
counts add up across them, in one transaction."""


def _rows_per_statement(width: int) -> int:
    return max(1, PARAMETERS_PER_STATEMENT // width)


def values_update(conn: sa.Connection, head: str, casts: list[str],
                   rows: list[tuple[Any, ...]], tail: str) -> int:
    """``<head> FROM (VALUES ...) AS v WHERE <tail>``, columns v.column1...;
    returns the rowcount (summed over the statements that ``rows`` need).
    Raw driver SQL: compiling a statement this size through SQLAlchemy
    costs more than running it."""
    step = _rows_per_statement(len(casts))
    hit = 0
    for k in range(0, len(rows), step):
        part = rows[k:k + step]
        sql = f"{head} FROM (VALUES {_values(conn, casts, len(part))}) AS v WHERE {tail}"
        hit += _execute(conn, sql, tuple(value for row in part for value in row))
    return hit


def _insert_flat(conn: sa.Connection, table: str, columns: tuple[str, ...],
                 cells: tuple[str, ...], params: list[Any]) -> None:
    """Multi-row INSERTs of ``params`` laid out flat, a value for each
    ``{m}`` of ``cells`` a row, as few statements as
    ``PARAMETERS_PER_STATEMENT`` allows."""
    width = cells.count("{m}")
    step = _rows_per_statement(width) * width
    mark = _placeholder(conn)
    for k in range(0, len(params), step):
        part = params[k:k + step]
        _execute(conn, _insert_sql(table, columns, cells, mark, len(part) // width),
                 tuple(part))


def insert_rows(conn: sa.Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """One multi-row INSERT; JSON columns serialized here with orjson. Each
    row's values are taken by one ``itemgetter`` call (in C), not a
    generator step per cell."""
    columns = tuple(c.name for c in table.columns if c.name in rows[0])
    json_names = {c.name for c in table.columns if isinstance(c.type, sa.JSON)}
    json_at = [i for i, name in enumerate(columns) if name in json_names]
    take = operator.itemgetter(*columns)
    dumps = orjson.dumps
    params: list[Any] = []
    for row in rows:
        values = take(row) if len(columns) > 1 else (row[columns[0]],)
        if json_at:
            values = list(values)
            for i in json_at:
                values[i] = dumps(values[i]).decode()
        params += values
    _insert_flat(conn, table.name, columns, ("{m}",) * len(columns), params)


def shift_balances(conn: sa.Connection, deltas: dict[tuple[str, str], int]) -> bool:
    """Add each net delta to its (node, resource) row, all or nothing: False
    when any row would leave [0, capacity] (nothing is then usable: roll back)."""
    rows = [(n, r, q) for (n, r), q in deltas.items() if q]
    if not rows:
        return True
    hit = values_update(
        conn, "UPDATE node_resources SET allocated = node_resources.allocated + v.column3",
        ["", "", "BIGINT"], rows,
        "node_resources.node = v.column1 AND node_resources.resource = v.column2 "
        "AND node_resources.allocated + v.column3 <= node_resources.capacity "
        "AND node_resources.allocated + v.column3 >= 0",
    )
    return hit == len(rows)


def grant_many(conn: sa.Connection, allocs: Sequence[Allocation]) -> bool:
    """Take the devices of many grants and insert their rows (balances are
    shifted by ``shift_balances``); False when a device was already held."""
    if not allocs:
        return True
    takes = [(a.node, r, d, a.id) for a in allocs for r, ids in a.devices.items() for d in ids]
    if takes:
        hit = values_update(
            conn, "UPDATE devices SET allocation_id = v.column4", ["", "", "", ""], takes,
            "devices.node = v.column1 AND devices.resource = v.column2 "
            "AND devices.device_id = v.column3 AND devices.allocation_id IS NULL",
        )
        if hit != len(takes):
            return False
    insert_allocations(conn, allocs)
    return True


_ALLOCATION_COLUMNS = ("id", "node", "owner", "resources", "devices", "labels", "state",
                       "reason", "created_at", "released_at")
_ACTIVE_CELLS = ("{m}", "{m}", "{m}", "{m}", "{m}", "{m}", "'active'", "NULL", "{m}", "NULL")
"""An active allocation's row (every grant's) with its state, reason and
release time as literals: the sqlite3 module binds a None through its
adapter lookup, which formats and clears an AttributeError each time."""


@functools.lru_cache(maxsize=512)
def _insert_sql(table: str, columns: tuple[str, ...], cells: tuple[str, ...], mark: str,
                count: int) -> str:
    row = "(" + ", ".join(cell.format(m=mark) for cell in cells) + ")"
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES {', '.join([row] * count)}"


def insert_allocations(conn: sa.Connection, allocs: Sequence[Allocation]) -> None:
    """One multi-row INSERT of allocation rows, parameters laid out flat
    (what ``insert_rows`` does for any table, without a dict per row)."""
    dumps = orjson.dumps
    active = all(a.state is ACTIVE and a.reason is None
                 and a.released_at is None for a in allocs)
    params: list[Any] = []
    for a in allocs:
        # Most grants hold no devices and carry no labels: their "{}" as is.
        params += (a.id, a.node, a.owner, dumps(dict(a.resources)).decode(),
                   dumps(dict(a.devices)).decode() if a.devices else "{}",
                   dumps(a.labels).decode() if a.labels else "{}")
        params += (a.created_at,) if active else (
            a.state.value, a.reason.value if a.reason else None, a.created_at, a.released_at)
    _insert_flat(conn, "allocations", _ALLOCATION_COLUMNS,
                 _ACTIVE_CELLS if active else ("{m}",) * len(_ALLOCATION_COLUMNS), params)


def release_many(conn: sa.Connection, released: Sequence[Allocation]) -> bool:
    """Mark many allocations released and free their devices (balances are
    shifted by ``shift_balances``); False when any was no longer active."""
    if not released:
        return True
    marks = [(a.id, a.reason.value if a.reason else None, a.released_at) for a in released]
    hit = values_update(
        conn,
        "UPDATE allocations SET state = 'released', reason = v.column2, released_at = v.column3",
        ["", "", "FLOAT"], marks, "allocations.id = v.column1 AND allocations.state = 'active'",
    )
    if hit != len(marks):
        return False
    held = [a.id for a in released if a.devices]
    if held:
        conn.execute(devices.update().where(devices.c.allocation_id.in_(held))
                     .values(allocation_id=None))
    return True


def balance_deltas(grants: Sequence[Allocation],
                   releases: Sequence[Allocation]) -> dict[tuple[str, str], int]:
    deltas: dict[tuple[str, str], int] = {}
    for a in grants:
        for r, q in a.resources.items():
            deltas[(a.node, r)] = deltas.get((a.node, r), 0) + q
    for a in releases:
        for r, q in a.resources.items():
            deltas[(a.node, r)] = deltas.get((a.node, r), 0) - q
    return deltas
