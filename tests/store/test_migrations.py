"""Migrations: idempotent, and they build exactly the tables schema.py describes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from apportion.core.model import Node
from apportion.store import ledger_tables as tables
from apportion.store.database import MIGRATIONS, create_engine, migrate
from apportion.store.schema import metadata

LEDGER_TABLES = {
    "nodes": ["name", "labels", "specs", "state", "health", "created_at", "updated_at"],
    "node_resources": ["node", "resource", "capacity", "allocated"],
    "devices": [
        "node",
        "resource",
        "device_id",
        "position",
        "model",
        "memory",
        "uuid",
        "serial",
        "attrs",
        "allocation_id",
    ],
    "allocations": [
        "id",
        "node",
        "owner",
        "resources",
        "devices",
        "labels",
        "state",
        "reason",
        "created_at",
        "released_at",
    ],
    "tokens": ["id", "name", "role", "token_hash", "created_at", "expires_at"],
    "events": ["id", "kind", "subject", "origin", "data", "at"],
}


@pytest.fixture
def engine(store_url: str) -> Iterator[sa.Engine]:
    """An engine on an empty database, not yet migrated."""
    engine = create_engine(store_url, sqlite_synchronous="OFF")
    try:
        yield engine
    finally:
        engine.dispose()


def _snapshot(engine: sa.Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        inspector = sa.inspect(conn)
        return {
            table: {
                "columns": [
                    (c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table)
                ],
                "pk": inspector.get_pk_constraint(table)["constrained_columns"],
                "indexes": sorted(
                    (i["name"], tuple(i["column_names"])) for i in inspector.get_indexes(table)
                ),
            }
            for table in sorted(inspector.get_table_names())
        }


def _head() -> str:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


def _versions(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars())


def test_migrate_twice_is_a_no_op(engine: sa.Engine) -> None:
    migrate(engine)
    first = _snapshot(engine)
    with engine.begin() as conn:
        tables.insert_node(conn, Node("n1", {"cpu": 1000}, created_at=1.0, updated_at=1.0))
    migrate(engine)
    assert _snapshot(engine) == first
    assert _versions(engine) == [_head()]
    with engine.connect() as conn:
        assert tables.load_nodes(conn) == [
            Node("n1", {"cpu": 1000}, created_at=1.0, updated_at=1.0)
        ]


def test_migrated_tables_and_columns_match_the_metadata(engine: sa.Engine) -> None:
    migrate(engine)
    with engine.connect() as conn:
        inspector = sa.inspect(conn)
        migrated = {
            t: [c["name"] for c in inspector.get_columns(t)]
            for t in inspector.get_table_names()
            if t != "alembic_version"
        }
    declared = {t.name: [c.name for c in t.columns] for t in metadata.sorted_tables}
    assert migrated == declared
    # issue 2's ledger tables, column for column (later issues add tables beside them)
    assert {t: declared[t] for t in LEDGER_TABLES} == LEDGER_TABLES


def test_migrated_schema_has_no_autogenerate_diff(engine: sa.Engine) -> None:
    # Types, nullability, keys, indexes and unique constraints as alembic compares them.
    migrate(engine)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, metadata) == []


def test_migrated_schema_keeps_the_capacity_check(engine: sa.Engine) -> None:
    migrate(engine)
    with engine.connect() as conn:
        inspector = sa.inspect(conn)
        checks = inspector.get_check_constraints("node_resources")
        keys = inspector.get_pk_constraint("node_resources")["constrained_columns"]
        foreign = inspector.get_foreign_keys("node_resources")
    assert [c["name"] for c in checks] == ["allocated_within_capacity"]
    assert keys == ["node", "resource"]
    assert [(f["referred_table"], f["referred_columns"]) for f in foreign] == [("nodes", ["name"])]
    assert foreign[0]["options"].get("ondelete") == "CASCADE"
