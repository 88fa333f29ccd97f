"""Nodes, per-node resource rows, devices, allocations, tokens, events.

Revision ID: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_BIGID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("name", sa.String(253), primary_key=True),
        sa.Column("labels", sa.JSON, nullable=False),
        sa.Column("specs", sa.JSON, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("health", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "node_resources",
        sa.Column(
            "node",
            sa.String(253),
            sa.ForeignKey("nodes.name", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("resource", sa.String(63), primary_key=True),
        sa.Column("capacity", sa.BigInteger, nullable=False),
        sa.Column("allocated", sa.BigInteger, nullable=False),
        sa.CheckConstraint(
            "allocated >= 0 AND allocated <= capacity", name="allocated_within_capacity"
        ),
    )
    op.create_table(
        "devices",
        sa.Column(
            "node",
            sa.String(253),
            sa.ForeignKey("nodes.name", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("resource", sa.String(63), primary_key=True),
        sa.Column("device_id", sa.String(128), primary_key=True),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("model", sa.String(128)),
        sa.Column("memory", sa.BigInteger),
        sa.Column("uuid", sa.String(128)),
        sa.Column("serial", sa.String(128)),
        sa.Column("attrs", sa.JSON, nullable=False),
        sa.Column("allocation_id", sa.String(40)),
    )
    op.create_table(
        "allocations",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("node", sa.String(253), nullable=False),
        sa.Column("owner", sa.String(253)),
        sa.Column("resources", sa.JSON, nullable=False),
        sa.Column("devices", sa.JSON, nullable=False),
        sa.Column("labels", sa.JSON, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(32)),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("released_at", sa.Float),
    )
    op.create_index("ix_allocations_state_node", "allocations", ["state", "node"])
    op.create_index("ix_allocations_owner", "allocations", ["owner"])
    op.create_table(
        "tokens",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(253), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "events",
        sa.Column("id", _BIGID, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("subject", sa.String(253), nullable=False),
        sa.Column("origin", sa.String(64), nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
        sa.Column("at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    for table in ("events", "tokens", "allocations", "devices", "node_resources", "nodes"):
        op.drop_table(table)
