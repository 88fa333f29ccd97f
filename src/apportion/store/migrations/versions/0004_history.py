"""Metric history: series, raw samples (kept a day) and fixed-step rollups
(kept 90 days); see service/history_service.py.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_BIGID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "history_series",
        sa.Column("id", _BIGID, primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(1024), nullable=False, unique=True),
        sa.Column("metric", sa.String(64), nullable=False),
        sa.Column("labels", sa.JSON, nullable=False),
    )
    op.create_table(
        "history_samples",
        sa.Column("series_id", sa.BigInteger, primary_key=True),
        sa.Column("at", sa.Float, primary_key=True),
        sa.Column("value", sa.Float, nullable=False),
    )
    op.create_index("ix_history_samples_at", "history_samples", ["at"])
    op.create_table(
        "history_rollups",
        sa.Column("series_id", sa.BigInteger, primary_key=True),
        sa.Column("start", sa.Float, primary_key=True),
        sa.Column("step", sa.Float, nullable=False),
        sa.Column("min", sa.Float, nullable=False),
        sa.Column("max", sa.Float, nullable=False),
        sa.Column("mean", sa.Float, nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("last", sa.Float, nullable=False),
    )
    op.create_index("ix_history_rollups_start", "history_rollups", ["start"])


def downgrade() -> None:
    for table in ("history_rollups", "history_samples", "history_series"):
        op.drop_table(table)
